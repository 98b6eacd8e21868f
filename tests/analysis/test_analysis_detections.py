"""The location each detection came from (postprocess with_locations): the
other outputs are unchanged, and each detection's box is that location's
own prediction decoded by hand."""

import jax
import numpy as np

from fcos_jax.core import postprocess
from fcos_jax.model.config import official
from fcos_jax.core.locations import compute_locations
from fcos_jax.model.outputs import HeadOutputs

CFG = official(num_classes=3, pre_nms_topk=40, max_detections=25)
CANVAS = (64, 96)


def _outputs(seed=0, b=2):
  loc = compute_locations(CANVAS, CFG)
  rng = np.random.default_rng(seed)
  p = loc.num_locations
  return loc, HeadOutputs(
      cls_logits=rng.normal(-2, 1.5, (b, p, 3)).astype(np.float32),
      box_regression=rng.uniform(0.2, 3, (b, p, 4)).astype(np.float32),
      centerness=rng.normal(0, 1, (b, p)).astype(np.float32))


def test_locations_leave_other_outputs_unchanged_and_decode_the_box():
  loc, out = _outputs()
  hw = np.array([[64, 96], [50, 80]], np.int32)
  plain = jax.jit(lambda o: postprocess.postprocess(o, loc, hw, hw, CFG))(out)
  located = jax.jit(lambda o: postprocess.postprocess(
      o, loc, hw, hw, CFG, with_locations=True))(out)
  assert sorted(plain) == ["boxes", "classes", "scores", "valid"]
  for k in plain:
    np.testing.assert_array_equal(np.asarray(plain[k]), np.asarray(located[k]))
  where = np.asarray(located["locations"])
  valid = np.asarray(located["valid"])
  assert valid.sum() > 10 and (where[~valid] == -1).all()
  for i, k in zip(*np.nonzero(valid)):
    p = where[i, k]
    x, y = loc.points[p]
    l, t, r, b = out.box_regression[i, p] * loc.strides[p]
    h, w = hw[i]
    want = np.clip([x - l, y - t, x + r, y + b], 0, [w, h, w, h])
    np.testing.assert_allclose(np.asarray(located["boxes"][i, k]), want,
                               rtol=1e-6, atol=1e-4)
    # Its score is that location's sqrt(prob * ctr) for its class.
    c = int(located["classes"][i, k])
    sig = lambda v: 1 / (1 + np.exp(-v))
    want_score = np.sqrt(sig(out.cls_logits[i, p, c])
                         * sig(out.centerness[i, p]))
    np.testing.assert_allclose(float(located["scores"][i, k]), want_score,
                               rtol=1e-5)
