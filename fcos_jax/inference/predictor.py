"""Batched prediction over all local devices, one compiled program per canvas.

Images of any size are resized by the config's rule onto the smallest canvas
that holds them (`images.Resizer`, the evaluation pipeline's rule and ops),
gathered per canvas into batches of `batch_size` (a multiple of the device
count, sharded over them) and run through `inference.detect.forward`. Each
(canvas, heatmaps on/off) is compiled once, on first use, and reused.

Single process: with several processes (a pod slice), run one predictor per
process on its own share of the files and a mesh of its local devices.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import functools
from typing import Callable, Iterable, Iterator

import jax
import numpy as np
from jax.sharding import Mesh

from fcos_jax import errors, runtime
from fcos_jax.inference import images as images_lib
from fcos_jax.core import detect
from fcos_jax.model.config import ModelConfig


@dataclasses.dataclass
class Prepared:
  """One image on its canvas, ready for the device."""

  key: object  # The caller's handle (index, path, ...), returned with it.
  canvas: int  # Index into the resizer's canvases.
  image: np.ndarray  # uint8 [H, W, 3] canvas.
  image_hw: tuple[int, int]  # Resized size in the canvas.
  orig_hw: tuple[int, int]  # Original size: boxes come in these pixels.
  original: np.ndarray | None = None  # The decoded image, if asked for.


@dataclasses.dataclass
class Failed:
  """An input that could not be prepared, and why."""

  key: object
  error: str


class Predictor:
  """`predictor(arrays)` -> per image dict of NumPy arrays:

    boxes  float32 [k, 4] (x0, y0, x1, y1) original pixels, by score;
    scores float32 [k]; labels int32 [k] contiguous class labels;
    maps   (with heatmaps=True) tuple over levels of float32 [h_l, w_l],
           `detect.score_maps` over the resized image's cells.
  """

  def __init__(self, cfg: ModelConfig, params, resizer: images_lib.Resizer, *,
               batch_size: int | None = None, mesh: Mesh | None = None):
    self.cfg = cfg
    self.resizer = resizer
    self.mesh = mesh or Mesh(np.asarray(jax.local_devices()),
                             (runtime.DATA_AXIS,))
    n = self.mesh.devices.size
    bs = int(batch_size or n)
    self.batch_size = -(-bs // n) * n
    self._rep = runtime.replicated(self.mesh)
    self._data = runtime.batch_sharded(self.mesh)
    self.params = jax.device_put(params, self._rep)
    self._compiled: dict = {}

  @property
  def num_compiled(self) -> int:
    """Programs compiled so far (one per canvas and heatmap setting)."""
    return len(self._compiled)

  def _program(self, canvas_hw, heatmaps: bool) -> Callable:
    key = (tuple(canvas_hw), bool(heatmaps))
    if key not in self._compiled:
      fn = detect.forward_with_maps if heatmaps else detect.forward
      jitted = jax.jit(functools.partial(fn, cfg=self.cfg),
                       in_shardings=(self._rep, self._data, self._data,
                                     self._data), out_shardings=self._data)
      b = self.batch_size
      args = (self.params,
              jax.ShapeDtypeStruct((b, *canvas_hw, 3), np.uint8),
              jax.ShapeDtypeStruct((b, 2), np.int32),
              jax.ShapeDtypeStruct((b, 2), np.int32))
      self._compiled[key] = jitted.lower(*args).compile()
    return self._compiled[key]

  def prepare(self, image: np.ndarray, key=None, name: str = "image",
              resizer: images_lib.Resizer | None = None) -> Prepared:
    """uint8 [h, w, 3] RGB (or [h, w] gray) -> the image on its canvas
    (of `resizer`, default: the predictor's own)."""
    image = np.asarray(image)
    if image.ndim == 2:
      image = np.repeat(image[..., None], 3, axis=-1)
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
      raise errors.DataError(
          f"{name}: expected a uint8 [H, W, 3] RGB array, got {image.dtype} "
          f"{image.shape}.")
    # An empty or extreme shape is refused by name here (`Resizer` asks the
    # bucket rule), before TF's resize could fail on it.
    index, canvas, image_hw = (resizer or self.resizer)(image, name)
    return Prepared(key, index, canvas, image_hw, tuple(image.shape[:2]))

  def run_batch(self, items: list[Prepared], heatmaps: bool = False
                ) -> list[dict]:
    """Detections of up to `batch_size` prepared images of one canvas."""
    if not items:
      return []
    if len(items) > self.batch_size or len({p.canvas for p in items}) != 1:
      raise ValueError("run_batch takes up to batch_size images of one canvas.")
    canvas_hw = self.resizer.canvases[items[0].canvas]
    b = self.batch_size
    image = np.zeros((b, *canvas_hw, 3), np.uint8)
    # Padding rows: a full-canvas "image", so no division by zero happens.
    image_hw = np.tile(np.asarray(canvas_hw, np.int32), (b, 1))
    orig_hw = image_hw.copy()
    for i, p in enumerate(items):
      image[i] = p.image
      image_hw[i] = p.image_hw
      orig_hw[i] = p.orig_hw
    out = jax.device_get(self._program(canvas_hw, heatmaps)(
        self.params, image, image_hw, orig_hw))
    results = []
    for i, p in enumerate(items):
      keep = out["valid"][i]
      r = {"boxes": out["boxes"][i][keep], "scores": out["scores"][i][keep],
           "labels": out["classes"][i][keep].astype(np.int32)}
      if heatmaps:
        r["maps"] = tuple(
            m[i, :-(-p.image_hw[0] // s), :-(-p.image_hw[1] // s)]
            for m, s in zip(out["maps"], self.cfg.strides))
      results.append(r)
    return results

  def stream(self, prepared: Iterable[Prepared | Failed],
             heatmaps: bool = False, max_wait: int | None = None
             ) -> Iterator[tuple[object, dict | str]]:
    """(key, result dict) for every prepared image and (key, error text) for
    every failed one, as batches complete (not in input order): images are
    gathered per canvas into full batches; the rest run at the end.

    max_wait: a partial batch also runs once its first image has waited
    for this many later inputs, so that a caller putting the results back
    in input order holds at most about that many (a canvas that few
    images need would otherwise keep the rest waiting to the end)."""
    pending = collections.defaultdict(list)
    first = {}  # canvas -> position of the first image of its batch
    for n, p in enumerate(prepared):
      if isinstance(p, Failed):
        yield p.key, p.error
      else:
        pending[p.canvas].append(p)
        first.setdefault(p.canvas, n)
        if len(pending[p.canvas]) == self.batch_size:
          first.pop(p.canvas)
          batch = pending.pop(p.canvas)
          yield from zip((q.key for q in batch),
                         self.run_batch(batch, heatmaps))
      if max_wait is not None:
        for canvas in [c for c, n0 in first.items() if n - n0 >= max_wait]:
          first.pop(canvas)
          batch = pending.pop(canvas)
          yield from zip((q.key for q in batch),
                         self.run_batch(batch, heatmaps))
    for batch in pending.values():
      yield from zip((q.key for q in batch), self.run_batch(batch, heatmaps))

  def __call__(self, arrays: list[np.ndarray], heatmaps: bool = False
               ) -> list[dict]:
    """Per image results, in input order."""
    prepared = [self.prepare(a, key=i, name=f"image {i}")
                for i, a in enumerate(arrays)]
    out = dict(self.stream(prepared, heatmaps))
    return [out[i] for i in range(len(arrays))]


def load_prepared(predictor: Predictor, paths: Iterable[str], *,
                  exif: bool = True, workers: int = 4, ahead: int = 32,
                  keep_original: bool = False
                  ) -> Iterator[Prepared | Failed]:
  """Reads, decodes and resizes files in `workers` threads (TF's ops run
  outside the GIL), in order, at most `ahead` files in flight. key = the
  file's position in `paths`. A file that cannot be read or decoded, or
  fits no canvas, comes out as `Failed` with the reason. keep_original:
  the decoded image stays in `Prepared.original` (for drawing)."""

  def load(i, path):
    try:
      image = images_lib.read_image(path, exif=exif)
      p = predictor.prepare(image, key=i, name=path)
      if keep_original:
        p.original = image
      return p
    except (errors.UnreadableImage, errors.DataError,
            ValueError) as e:
      return Failed(i, str(e))

  with concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool:
    queue = collections.deque()
    for i, path in enumerate(paths):
      queue.append(pool.submit(load, i, path))
      if len(queue) >= ahead:
        yield queue.popleft().result()
    while queue:
      yield queue.popleft().result()
