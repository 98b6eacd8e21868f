"""`fcos_jax.Detector`: a trained or converted FCOS as a Python callable.

    import fcos_jax
    det = fcos_jax.Detector.from_workdir("/tmp/fcos_synthetic")
    (out,) = det(["photo.jpg"])            # paths, URLs or uint8 HxWx3 arrays
    for box, score, name in zip(out["boxes"], out["scores"], out["names"]):
      print(name, round(float(score), 2), box)   # (x0, y0, x1, y1) pixels
    for path, out in det.predict_files(paths):   # many files, in order
      records = det.to_coco([out], [image_id])   # COCO results records

More, with examples that run: docs/api.md.

Images are resized by the run's rule (data.min_size / max_size) onto the
smallest of its canvases that holds them, batched over the local devices;
each canvas is compiled once, on first use, and reused.
"""

from __future__ import annotations

import concurrent.futures
import os
from typing import Iterable, Iterator, Sequence

import jax
import numpy as np

from fcos_jax import errors
from fcos_jax.inference import coco_results
from fcos_jax.inference import images as images_lib
from fcos_jax.inference.predictor import Predictor, load_prepared
from fcos_jax.inference.tta import TTARunner, TTASettings
from fcos_jax.model.config import ModelConfig
from fcos_jax.model.config_dict import model_config_from
from fcos_jax.run import Run

# torchvision's COCO transform: short side 800, long side <= 1333, padded to
# multiples of 32; our canvases hold every such image in either orientation.
TORCHVISION_SIZES = dict(min_size=800, max_size=1333,
                         canvases=((800, 1344), (1344, 800)))


class Detector:
  """An FCOS model with its categories and resize rule.

  det(images) -> one dict per image:
    boxes  float32 [k, 4] (x0, y0, x1, y1) in the original image's pixels
           (after EXIF rotation, for files), best score first;
    scores float32 [k]; labels int32 [k] (contiguous, index into
    `det.categories`); names [k] category names; category_ids [k].
  """

  def __init__(self, cfg: ModelConfig, params, categories: Sequence[dict], *,
               min_size, max_size: int, canvases, batch_size: int | None = None,
               mesh=None, tta: TTASettings | None = None):
    if len(categories) != cfg.num_classes:
      raise errors.ConfigError(
          f"Detector: {len(categories)} categories for a model of "
          f"num_classes={cfg.num_classes}.")
    self.cfg = cfg
    self.categories = [{"id": int(c["id"]), "name": str(c["name"])}
                       for c in categories]
    self.names = [c["name"] for c in self.categories]
    self.category_ids = np.asarray([c["id"] for c in self.categories])
    self.predictor = Predictor(
        cfg, params, images_lib.Resizer(min_size, max_size, canvases),
        batch_size=batch_size, mesh=mesh)
    self.step = None  # The checkpoint step, when loaded from a workdir.
    # Test-time augmentation (passes merged as the official FCOS), or None.
    self.tta = TTARunner(self.predictor, tta) if tta else None

  @property
  def params(self):
    """The model parameters (on the local devices)."""
    return self.predictor.params

  @property
  def canvases(self) -> tuple[tuple[int, int], ...]:
    """The (H, W) canvases images are resized onto, smallest first."""
    return self.predictor.resizer.canvases

  # --- Constructors ----------------------------------------------------------

  @classmethod
  def from_workdir(cls, workdir: str, step=None, *, config=None,
                   score_thresh: float | None = None,
                   batch_size: int | None = None,
                   tta: TTASettings | None | str = "config") -> "Detector":
    """A train.py (or fcos-convert) workdir's checkpoint.

    step: a step number, a checkpoint directory, or None for the latest.
    config: the run config (default: the run's recorded config.json).
    score_thresh: overrides model.inference.score_thresh (the candidate threshold).
    batch_size: images per device call (default: config.eval_batch_size).
    tta: test-time augmentation settings, None for none; default: the
      config's (config.tta, off unless enabled).
    """
    run = Run(workdir)
    config = config or run.recorded_config()
    cfg = model_config_from(config.model)
    if score_thresh is not None:
      cfg = cfg.replace(score_thresh=float(score_thresh))
    mesh = _local_mesh()
    data = config.data
    params, restored_step, categories = run.restore_params(
        cfg, step, canvas_hw=data.canvases[0], mesh=mesh)
    n = jax.local_device_count()
    bs = batch_size or max(int(config.get("eval_batch_size", n)) //
                           max(jax.process_count(), 1), 1)
    det = cls(cfg, params, categories, min_size=_as_min_size(data.min_size),
              max_size=int(data.max_size), canvases=data.canvases,
              batch_size=bs, mesh=mesh,
              tta=TTASettings.from_config(config) if tta == "config" else tta)
    det.step = restored_step
    return det

  @classmethod
  def from_torchvision(cls, pth, *, score_thresh: float | None = None,
                       batch_size: int | None = None, **sizes) -> "Detector":
    """torchvision's `fcos_resnet50_fpn` COCO weights (`.pth`, needs torch;
    or the same state dict as `.npz`): the 80 COCO categories, torchvision's
    preset (its location rule included) and resize rule (`sizes`:
    min_size, max_size, canvases override it)."""
    from fcos_jax.convert import torchvision as tv  # pylint: disable=import-outside-toplevel
    cfg, params, categories = tv.convert_coco_detector(pth)
    if score_thresh is not None:
      cfg = cfg.replace(score_thresh=float(score_thresh))
    return cls(cfg, params, categories, batch_size=batch_size,
               **dict(TORCHVISION_SIZES, **sizes))

  # --- Use -------------------------------------------------------------------

  def __call__(self, images, *, heatmaps: bool = False, exif: bool = True
               ) -> list[dict]:
    """images: one or a list of paths/URLs or uint8 [H, W, 3] RGB arrays
    (or [H, W] gray). A file that cannot be read raises UnreadableImage."""
    if isinstance(images, (str, os.PathLike, np.ndarray)):
      images = [images]
    self._check_heatmaps(heatmaps)
    arrays = [images_lib.read_image(os.fspath(x), exif=exif)
              if isinstance(x, (str, os.PathLike)) else np.asarray(x)
              for x in images]
    if self.tta:
      return [self.describe(r) for r in self.tta(arrays)]
    return [self.describe(r) for r in self.predictor(arrays, heatmaps)]

  def _check_heatmaps(self, heatmaps: bool):
    if heatmaps and self.tta:
      raise errors.ConfigError(
          "heatmaps show one pass of the model; turn test-time augmentation "
          "off (--tta=none, config.tta.enabled=False) to draw them.")

  def predict_files(self, paths: Iterable[str], *, heatmaps: bool = False,
                    exif: bool = True, workers: int = 4,
                    keep_images: bool = False
                    ) -> Iterator[tuple[str, dict | errors.UnreadableImage]]:
    """Streams files (paths or URLs) through the model: yields (path,
    result) in input order, result as `__call__` gives it (with "image",
    the decoded uint8 array, when keep_images), or an `UnreadableImage`
    naming the file and why for one that cannot be read, decoded or fit
    on a canvas. Files are read ahead in `workers` threads and batched
    per canvas; only a few batches of images and results are held at a
    time, whatever the number of files."""
    paths = [os.fspath(p) for p in paths]
    self._check_heatmaps(heatmaps)
    if self.tta:
      yield from self._predict_files_tta(paths, exif, workers, keep_images)
      return
    images = {}

    def prepared():
      for p in load_prepared(self.predictor, paths, exif=exif,
                             workers=workers, keep_original=keep_images):
        if keep_images and getattr(p, "original", None) is not None:
          images[p.key], p.original = p.original, None
        yield p

    done, next_key = {}, 0
    for key, r in self.predictor.stream(
        prepared(), heatmaps, max_wait=4 * self.predictor.batch_size):
      done[key] = r
      while next_key in done:
        r = done.pop(next_key)
        if isinstance(r, str):
          r = errors.UnreadableImage(r)
        else:
          r = self.describe(r)
          if keep_images:
            r["image"] = images.pop(next_key)
        yield paths[next_key], r
        next_key += 1

  def _predict_files_tta(self, paths, exif, workers, keep_images):
    """predict_files with test-time augmentation: a batch of files at a
    time through every pass and the merge."""
    def read(path):
      try:
        return images_lib.read_image(path, exif=exif)
      except errors.UnreadableImage as e:
        return e

    bs = self.predictor.batch_size
    with concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool:
      for start in range(0, len(paths), bs):
        chunk = paths[start:start + bs]
        arrays = list(pool.map(read, chunk))
        ok = [i for i, a in enumerate(arrays) if not isinstance(a, Exception)]
        try:
          results = dict(zip(ok, self.tta([arrays[i] for i in ok])))
        except (errors.DataError, ValueError):  # One image fits no canvas.
          results = {}
          for i in ok:
            try:
              results[i] = self.tta([arrays[i]])[0]
            except (errors.DataError, ValueError) as e:
              arrays[i] = errors.UnreadableImage(f"{chunk[i]}: {e}")
        for i, path in enumerate(chunk):
          if i not in results:
            yield path, arrays[i]
            continue
          r = self.describe(results[i])
          if keep_images:
            r["image"] = arrays[i]
          yield path, r

  def to_coco(self, results: Sequence[dict], image_ids: Sequence[int]
              ) -> list[dict]:
    """COCO results records (image_id, category_id: the dataset's id,
    bbox [x, y, w, h] in original pixels, score) of per-image results of
    `__call__` or `predict_files`, one image id per result."""
    if len(results) != len(image_ids):
      raise ValueError(f"to_coco: {len(results)} results but "
                       f"{len(image_ids)} image ids.")
    records = []
    for r, image_id in zip(results, image_ids):
      k = len(r["scores"])
      records += coco_results.detections_to_coco(
          {"image_id": np.asarray([image_id]), "boxes": r["boxes"][None],
           "scores": r["scores"][None], "classes": r["labels"][None],
           "valid": np.ones((1, k), bool)}, self.category_ids)
    return records

  def describe(self, result: dict) -> dict:
    """Adds names and category ids to a predictor result."""
    labels = result["labels"]
    return dict(result, names=[self.names[int(i)] for i in labels],
                category_ids=self.category_ids[labels].astype(np.int64))


def _local_mesh():
  from jax.sharding import Mesh  # pylint: disable=import-outside-toplevel
  from fcos_jax import runtime  # pylint: disable=import-outside-toplevel
  return Mesh(np.asarray(jax.local_devices()), (runtime.DATA_AXIS,))


def _as_min_size(value):
  return tuple(int(v) for v in value) if isinstance(value, (list, tuple)) \
      else int(value)
