"""The heads that change the ops export to ONNX (jax2onnx, ONNX's NMS): the
same detections as the Python forward pass, up to the order of equal
scores. VFNet: the star offsets and the deformable convs' gather; TOOD: the
T-head's layer attention, the score's logit from two log-sigmoids, expm1
and the box resampled at learned offsets. (The StableHLO and SavedModel
artifacts export the same jitted function as for every head.)"""

import jax
import numpy as np
import pytest

from fcos_jax.data import synthetic
from fcos_jax.export import serving
from fcos_jax.model import config as presets
from fcos_jax.model.fcos import init_variables
from tiny_run import tiny_model

CANVAS = (64, 96)


def _cfg(preset):
  base = tiny_model(num_classes=3)
  # With random weights every box decodes to about the same size: a high
  # NMS IoU keeps enough detections to compare.
  family = presets.PRESETS[preset]()
  return base.replace(quality=family.quality, loss=family.loss,
                      assign=family.assign, norm_reg_targets=False,
                      nms_iou=0.95, pre_nms_topk=20)


def _inputs(batch, seed):
  rng = np.random.default_rng(seed)
  images = np.zeros((batch, *CANVAS, 3), np.uint8)
  hw = np.asarray([[64, 96], [50, 80]][:batch], np.int32)
  for i, (h, w) in enumerate(hw):
    images[i, :h, :w] = synthetic.make_image(rng, int(h), int(w))[0]
  return images, hw, hw * 2


@pytest.mark.parametrize("preset", ["vfnet", "tood"])
def test_family_head_exports_to_onnx(tmp_path, preset):
  """ONNX Runtime gives the Python forward pass's detections."""
  pytest.importorskip("onnxruntime")
  pytest.importorskip("jax2onnx")
  from fcos_jax.export import onnx_export
  cfg = _cfg(preset)
  assert cfg.quality.name == preset
  params = serving.as_numpy_params(
      init_variables(cfg, jax.random.key(5))["params"])
  onnx_path = str(tmp_path / f"{preset}.onnx")
  onnx_export.export(cfg, params, CANVAS, onnx_path, batch=1)
  args = _inputs(1, seed=1)
  want = jax.device_get(jax.jit(serving.serving_function(cfg, params))(*args))
  got = {k: np.asarray(v)
         for k, v in onnx_export.load(onnx_path)(*args).items()}
  n = int(want["valid"].sum())
  assert n >= 5 and int(got["valid"].sum()) == n
  for k in range(n):  # Each detection has a twin on the other side.
    twin = ((got["classes"][0, :n] == want["classes"][0, k])
            & (np.abs(got["scores"][0, :n] - want["scores"][0, k]) <= 1e-5)
            & (np.abs(got["boxes"][0, :n] - want["boxes"][0, k]).max(-1)
               <= 1e-3))
    assert twin.any(), k
