"""Test-time augmentation on the device: the passes (short sides, flips),
their resize, their compiled programs, and the merge of
`fcos_jax.core.tta` (the official FCOS bbox_aug; docs/algorithm.md,
"Test-time augmentation").

The first pass is plain inference (the run's resize rule and canvases);
with `flip` its mirror image is a pass too; each of `scales` is a pass with
short side s and long side at most `max_size`, on canvases of its own
((S, M) and (M, S), S and M rounded up to 32), flipped too with `flip`.
Each (canvas, flip) is compiled once and reused; every pass's candidates
have a fixed count (the sum of the per-level top-k of its largest canvas),
so the merge has one static shape per pass list.

Settings (config.tta in configs/default.py; the CLIs' --tta flag):

  official_settings()  the official FCOS set: 400..1200 by 100 besides the
                       run's own 800, long side <= 2000, each flipped
                       (18 passes);
  cheap_settings(...)  the run's scale and one 1.25x larger, flipped
                       (4 passes).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Sequence

import jax
import numpy as np

from fcos_jax import errors
from fcos_jax.core import tta as tta_core
from fcos_jax.core.locations import compute_locations
from fcos_jax.inference import images as images_lib
from fcos_jax.inference.predictor import Predictor

# tianzhi0549/FCOS configs (TEST.BBOX_AUG): SCALES besides the 800 of
# INPUT.MIN_SIZE_TEST, MAX_SIZE 2000, H_FLIP and SCALE_H_FLIP.
OFFICIAL_SCALES = (400, 500, 600, 700, 900, 1000, 1100, 1200)
OFFICIAL_MAX_SIZE = 2000
CHEAP_FACTOR = 1.25
TTA_NAMES = ("none", "cheap", "official")


@dataclasses.dataclass(frozen=True)
class TTASettings:
  """scales: extra short sides (the run's own pass always comes first);
  max_size: their long-side cap; flip: every pass also mirrored."""

  scales: tuple[int, ...] = ()
  max_size: int = OFFICIAL_MAX_SIZE
  flip: bool = False

  def __post_init__(self):
    bad = [s for s in self.scales if int(s) < 32 or int(s) > self.max_size]
    if bad:
      raise errors.ConfigError(
          f"tta.scales={tuple(self.scales)}: {bad} outside 32.."
          f"tta.max_size={self.max_size}; give short sides <= max_size.")

  @property
  def num_passes(self) -> int:
    return (1 + len(self.scales)) * (2 if self.flip else 1)

  @classmethod
  def from_config(cls, config) -> "TTASettings | None":
    """config.tta as settings; None when absent (older run records) or
    not enabled."""
    t = config.get("tta") if hasattr(config, "get") else None
    if t is None or not t.get("enabled", False):
      return None
    return cls(scales=tuple(int(s) for s in t.get("scales", ())),
               max_size=int(t.get("max_size", OFFICIAL_MAX_SIZE)),
               flip=bool(t.get("flip", False)))


def official_settings() -> TTASettings:
  """The official FCOS test-time augmentation (18 passes)."""
  return TTASettings(OFFICIAL_SCALES, OFFICIAL_MAX_SIZE, True)


def _ceil32(x: float) -> int:
  return int(math.ceil(x / 32.0) * 32)


def cheap_settings(min_size, max_size: int) -> TTASettings:
  """The run's scale and one 1.25x larger (rounded up to 32), flipped: 4
  passes. min_size, max_size: the run's data.min_size / max_size."""
  base = max(min_size) if isinstance(min_size, (tuple, list)) else min_size
  return TTASettings((_ceil32(CHEAP_FACTOR * int(base)),),
                     _ceil32(CHEAP_FACTOR * int(max_size)), True)


def apply_to_config(config, name: str) -> None:
  """Sets config.tta to the named settings ("none", "cheap", "official")."""
  if name not in TTA_NAMES:
    raise errors.ConfigError(f"--tta={name!r}: must be one of {TTA_NAMES}.")
  import ml_collections  # pylint: disable=import-outside-toplevel
  with config.unlocked():
    if "tta" not in config:
      config.tta = ml_collections.ConfigDict(
          {"enabled": False, "scales": (), "max_size": OFFICIAL_MAX_SIZE,
           "flip": False})
    if name == "none":
      config.tta.enabled = False
      return
    s = (official_settings() if name == "official" else
         cheap_settings(config.data.min_size, config.data.max_size))
    config.tta.enabled = True
    config.tta.scales = tuple(s.scales)
    config.tta.max_size = s.max_size
    config.tta.flip = s.flip


def scale_canvases(scale: int, max_size: int) -> tuple[tuple[int, int], ...]:
  """Canvases that hold any image resized to short side `scale`, long side
  <= `max_size`: landscape and portrait (one when they coincide)."""
  s, m = _ceil32(scale), _ceil32(max_size)
  return ((s, m),) if s == m else ((s, m), (m, s))


def flip_in_canvas(canvas: np.ndarray, image_hw) -> np.ndarray:
  """The canvas with its resized image (top-left, h x w) mirrored in place."""
  h, w = image_hw
  out = canvas.copy()
  out[:h, :w] = canvas[:h, :w][:, ::-1]
  return out


class TTARunner:
  """`runner(arrays)` -> per image dict (boxes [k, 4] original pixels, scores,
  labels), as `Predictor.__call__`, from all passes merged."""

  def __init__(self, predictor: Predictor, settings: TTASettings):
    self.predictor = predictor
    self.settings = settings
    base = predictor.resizer
    resizers = [base] + [
        images_lib.Resizer(s, settings.max_size,
                           scale_canvases(s, settings.max_size))
        for s in settings.scales]
    flips = (False, True) if settings.flip else (False,)
    self.passes = [(r, f) for r in resizers for f in flips]
    cfg = predictor.cfg
    # Candidates per image of each pass: its largest canvas's count.
    self.counts = [max(self._num_candidates(c) for c in r.canvases)
                   for r, _ in self.passes]
    self._programs: dict = {}
    self._merge = None

  def _num_candidates(self, canvas_hw) -> int:
    cfg = self.predictor.cfg
    sizes = compute_locations(tuple(canvas_hw), cfg).level_sizes
    return sum(min(cfg.inference.pre_nms_topk, h * w * cfg.num_classes)
               for h, w in sizes)

  @property
  def num_compiled(self) -> int:
    """Pass programs compiled so far (one per canvas and flip)."""
    return len(self._programs)

  def _program(self, canvas_hw, hflip: bool):
    key = (tuple(canvas_hw), bool(hflip))
    if key not in self._programs:
      p = self.predictor
      fn = functools.partial(tta_core.pass_candidates, cfg=p.cfg, hflip=hflip)
      b = p.batch_size
      shapes = (p.params, jax.ShapeDtypeStruct((b, *canvas_hw, 3), np.uint8),
                jax.ShapeDtypeStruct((b, 2), np.int32),
                jax.ShapeDtypeStruct((b, 2), np.int32))
      self._programs[key] = jax.jit(
          fn, in_shardings=(p._rep, p._data, p._data, p._data),  # pylint: disable=protected-access
          out_shardings=p._data).lower(*shapes).compile()  # pylint: disable=protected-access
    return self._programs[key]

  def _merge_program(self):
    if self._merge is None:
      p = self.predictor
      n, b = sum(self.counts), p.batch_size
      fn = functools.partial(tta_core.merge, cfg=p.cfg)
      d = p._data  # pylint: disable=protected-access
      self._merge = jax.jit(fn, in_shardings=(d,) * 6, out_shardings=d).lower(
          jax.ShapeDtypeStruct((b, n, 4), np.float32),
          jax.ShapeDtypeStruct((b, n), np.float32),
          jax.ShapeDtypeStruct((b, n), np.int32),
          jax.ShapeDtypeStruct((b, n), bool),
          jax.ShapeDtypeStruct((b, 2), np.int32),
          jax.ShapeDtypeStruct((b, 2), np.int32)).compile()
    return self._merge

  def _run_pass(self, t: int, arrays, base_hw) -> dict:
    """Candidates [len(arrays), counts[t], ...] of pass t (NumPy)."""
    resizer, hflip = self.passes[t]
    p, n = self.predictor, self.counts[t]
    k = len(arrays)
    out = {"boxes": np.zeros((k, n, 4), np.float32),
           "scores": np.zeros((k, n), np.float32),
           "classes": np.zeros((k, n), np.int32),
           "valid": np.zeros((k, n), bool)}
    prepared = [p.prepare(a, key=i, name=f"image {i}", resizer=resizer)
                for i, a in enumerate(arrays)]
    for canvas in sorted({q.canvas for q in prepared}):
      group = [q for q in prepared if q.canvas == canvas]
      canvas_hw = resizer.canvases[canvas]
      for start in range(0, len(group), p.batch_size):
        items = group[start:start + p.batch_size]
        b = p.batch_size
        image = np.zeros((b, *canvas_hw, 3), np.uint8)
        image_hw = np.tile(np.asarray(canvas_hw, np.int32), (b, 1))
        base = image_hw.copy()
        for i, q in enumerate(items):
          image[i] = flip_in_canvas(q.image, q.image_hw) if hflip else q.image
          image_hw[i] = q.image_hw
          base[i] = base_hw[q.key]
        got = jax.device_get(self._program(canvas_hw, hflip)(
            p.params, image, image_hw, base))
        m = got["scores"].shape[1]
        for i, q in enumerate(items):
          for key in out:
            out[key][q.key, :m] = got[key][i]
    return out

  def __call__(self, arrays: Sequence[np.ndarray]) -> list[dict]:
    p = self.predictor
    results = []
    for start in range(0, len(arrays), p.batch_size):
      chunk = list(arrays[start:start + p.batch_size])
      base = [p.prepare(a, name=f"image {start + i}")
              for i, a in enumerate(chunk)]
      base_hw = np.asarray([q.image_hw for q in base], np.int32)
      passes = [self._run_pass(t, chunk, base_hw)
                for t in range(len(self.passes))]
      b, k = p.batch_size, len(chunk)
      cat = {key: np.concatenate([q[key] for q in passes], axis=1)
             for key in passes[0]}
      pad = lambda x: np.concatenate(
          [x, np.zeros((b - k,) + x.shape[1:], x.dtype)]) if b > k else x
      hw = np.concatenate([base_hw, np.ones((b - k, 2), np.int32)])
      orig = np.concatenate([np.asarray([q.orig_hw for q in base], np.int32),
                             np.ones((b - k, 2), np.int32)])
      dets = jax.device_get(self._merge_program()(
          pad(cat["boxes"]), pad(cat["scores"]), pad(cat["classes"]),
          pad(cat["valid"]), hw, orig))
      for i in range(k):
        keep = dets["valid"][i]
        results.append({"boxes": dets["boxes"][i][keep],
                        "scores": dets["scores"][i][keep],
                        "labels": dets["classes"][i][keep].astype(np.int32)})
    return results
