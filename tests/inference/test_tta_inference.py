"""Test-time augmentation through the Detector (fcos_jax/inference/tta.py):
one pass unflipped is plain inference exactly; a flipped pass mirrors its
boxes back; the settings and config helpers; several passes with one
compiled program per (canvas, flip)."""

import jax
import ml_collections
import numpy as np
import pytest

from fcos_jax import errors
from fcos_jax.configs import default, synthetic_cpu
from fcos_jax.core import tta as tta_core
from fcos_jax.inference import tta
from fcos_jax.inference.detector import Detector
from fcos_jax.model.fcos import init_variables
from tiny_run import tiny_model

CFG = tiny_model(num_classes=2)
CANVASES = ((64, 128), (128, 64))
CATS = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]


@pytest.fixture(scope="module")
def params():
  return init_variables(CFG, jax.random.key(0))["params"]


def _images(seed=0):
  rng = np.random.default_rng(seed)
  sizes = ((90, 120), (120, 90), (77, 203), (40, 50))
  return [rng.integers(0, 255, (*s, 3), dtype=np.uint8) for s in sizes]


def _detector(params, settings=None):
  return Detector(CFG, params, CATS, min_size=64, max_size=128,
                  canvases=CANVASES, tta=settings)


def test_one_pass_without_flip_is_plain_inference_exactly(params):
  arrays = _images()
  plain = _detector(params)(arrays)
  det = _detector(params, tta.TTASettings())
  assert len(det.tta.passes) == 1
  got = det(arrays)
  for p, g in zip(plain, got):
    assert len(p["scores"]) > 10
    for k in ("boxes", "scores", "labels"):
      np.testing.assert_array_equal(g[k], p[k])


def test_flip_in_canvas_by_hand():
  canvas = np.zeros((4, 6, 3), np.uint8)
  canvas[:3, :4, 0] = [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12]]
  canvas[:, 4:, 1] = 99  # Padding: stays where it is.
  out = tta.flip_in_canvas(canvas, (3, 4))
  np.testing.assert_array_equal(out[:3, :4, 0], [[4, 3, 2, 1], [8, 7, 6, 5],
                                                 [12, 11, 10, 9]])
  np.testing.assert_array_equal(out[:, 4:], canvas[:, 4:])
  np.testing.assert_array_equal(out[3], canvas[3])


def test_flipped_pass_mirrors_boxes_back(params):
  # The same flipped canvas through the pass program with and without
  # hflip: the boxes differ exactly by x -> w - x (w the resized width).
  arrays = _images(1)[:2]
  det = _detector(params, tta.TTASettings(flip=True))
  runner = det.tta
  p = runner.predictor
  q = p.prepare(arrays[0])
  canvas_hw = p.resizer.canvases[q.canvas]
  b = p.batch_size
  image = np.zeros((b, *canvas_hw, 3), np.uint8)
  image[0] = tta.flip_in_canvas(q.image, q.image_hw)
  hw = np.tile(np.asarray(canvas_hw, np.int32), (b, 1))
  hw[0] = q.image_hw
  plain = jax.device_get(runner._program(canvas_hw, False)(  # pylint: disable=protected-access
      p.params, image, hw, hw))
  mirrored = jax.device_get(runner._program(canvas_hw, True)(  # pylint: disable=protected-access
      p.params, image, hw, hw))
  valid = plain["valid"][0]
  assert valid.sum() > 10
  np.testing.assert_array_equal(mirrored["valid"], plain["valid"])
  np.testing.assert_array_equal(mirrored["scores"], plain["scores"])
  w = np.float32(q.image_hw[1])
  want = np.stack([w - plain["boxes"][0][:, 2], plain["boxes"][0][:, 1],
                   w - plain["boxes"][0][:, 0], plain["boxes"][0][:, 3]], -1)
  np.testing.assert_array_equal(mirrored["boxes"][0][valid], want[valid])


def test_several_passes_compile_once_per_canvas_and_flip(params):
  arrays = _images(2)
  settings = tta.TTASettings(scales=(96,), max_size=160, flip=True)
  det = _detector(params, settings)
  assert det.tta.passes and len(det.tta.passes) == settings.num_passes == 4
  assert tta.scale_canvases(96, 160) == ((96, 160), (160, 96))
  out = det(arrays)
  # Base canvases (2) and the scale's (2), each flipped and not.
  assert det.tta.num_compiled == 8
  again = det(arrays[::-1])
  assert det.tta.num_compiled == 8
  for o, a, r in zip(out, arrays, again[::-1]):
    assert 0 < len(o["scores"]) <= CFG.inference.max_detections
    assert (np.diff(o["scores"]) <= 0).all()
    h, w = a.shape[:2]
    assert (o["boxes"] >= 0).all() and (o["boxes"][:, [0, 2]] <= w).all() \
        and (o["boxes"][:, [1, 3]] <= h).all()
    np.testing.assert_allclose(r["scores"], o["scores"], rtol=1e-6)
  # The merge of all passes has at least the plain pass's best score.
  plain = _detector(params)(arrays)
  for o, p in zip(out, plain):
    assert o["scores"][0] >= p["scores"][0]
  with pytest.raises(errors.ConfigError, match="heatmaps"):
    det(arrays[:1], heatmaps=True)


def test_settings_and_config_helpers():
  off = default.get_config()
  assert tta.TTASettings.from_config(off) is None
  assert tta.TTASettings.from_config(ml_collections.ConfigDict({})) is None
  tta.apply_to_config(off, "official")
  s = tta.TTASettings.from_config(off)
  assert s == tta.official_settings()
  assert s.scales == (400, 500, 600, 700, 900, 1000, 1100, 1200)
  assert s.max_size == 2000 and s.flip and s.num_passes == 18
  syn = synthetic_cpu.get_config()
  tta.apply_to_config(syn, "cheap")
  cheap = tta.TTASettings.from_config(syn)
  assert cheap == tta.TTASettings((320,), 320, True) and cheap.num_passes == 4
  tta.apply_to_config(syn, "none")
  assert tta.TTASettings.from_config(syn) is None
  # A run record older than config.tta gets the group when asked.
  old = ml_collections.ConfigDict({"data": {"min_size": 800,
                                            "max_size": 1333}})
  tta.apply_to_config(old, "cheap")
  assert tta.TTASettings.from_config(old) == tta.TTASettings((1024,), 1696,
                                                             True)
  with pytest.raises(errors.ConfigError, match="tta.scales"):
    tta.TTASettings(scales=(3000,), max_size=2000)
  with pytest.raises(errors.ConfigError, match="--tta"):
    tta.apply_to_config(syn, "big")
  assert tta_core.flip_boxes is not None
