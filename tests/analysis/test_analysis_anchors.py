"""RetinaNet's anchors and their best possible recall against torchvision:
the same anchors as its AnchorGenerator, and the same recalled boxes as its
Matcher (IoU >= 0.4, with and without low-quality matches)."""

import jax
import numpy as np
import pytest

from fcos_jax.analysis import anchors

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
pytestmark = pytest.mark.torch

from torchvision.models.detection import anchor_utils, _utils as det_utils  # noqa: E402
from torchvision.models.detection.image_list import ImageList  # noqa: E402
from torchvision.ops import box_iou  # noqa: E402


def _torchvision_anchors(canvas_hw):
  sizes = tuple((x, int(x * 2 ** (1.0 / 3)), int(x * 2 ** (2.0 / 3)))
                for x in [32, 64, 128, 256, 512])
  gen = anchor_utils.AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(sizes))
  h, w = canvas_hw
  feats = [torch.zeros(1, 1, -(-h // s), -(-w // s)) for s in anchors.STRIDES]
  image = ImageList(torch.zeros(1, 3, h, w), [(h, w)])
  return gen(image, feats)[0].numpy()


@pytest.mark.parametrize("canvas_hw", [(128, 128), (160, 224)])
def test_anchors_equal_torchvision(canvas_hw):
  ours = anchors.retinanet_anchors(canvas_hw)
  np.testing.assert_array_equal(ours, _torchvision_anchors(canvas_hw))
  assert len(ours) == 9 * sum(-(-canvas_hw[0] // s) * -(-canvas_hw[1] // s)
                              for s in anchors.STRIDES)


@pytest.mark.parametrize("low_quality", [False, True])
def test_recalled_boxes_equal_torchvision_matcher(low_quality):
  canvas_hw = (160, 224)
  anchor_boxes = anchors.retinanet_anchors(canvas_hw)
  rng = np.random.default_rng(1)
  b, m = 6, 9
  x0 = rng.uniform(0, 200, (b, m))
  y0 = rng.uniform(0, 140, (b, m))
  # Many small boxes, which anchors miss without low-quality matches.
  w = np.exp(rng.uniform(np.log(4), np.log(150), (b, m)))
  h = w * np.exp(rng.uniform(-1, 1, (b, m)))
  boxes = np.stack([x0, y0, x0 + w, y0 + h], -1).astype(np.float32)
  valid = np.arange(m)[None] < rng.integers(2, m + 1, (b, 1))
  crowd = valid & (rng.uniform(size=(b, m)) < 0.1)
  ours = np.asarray(jax.jit(anchors.anchor_recalled_boxes,
                            static_argnums=4)(anchor_boxes, boxes, valid,
                                              crowd, low_quality))
  matcher = det_utils.Matcher(0.4, 0.4, allow_low_quality_matches=low_quality)
  for i in range(b):
    usable = np.flatnonzero(valid[i] & ~crowd[i])
    iou = box_iou(torch.from_numpy(boxes[i, usable]),
                  torch.from_numpy(anchor_boxes))
    matches = matcher(iou).numpy()
    want = np.zeros(m, bool)
    want[usable[np.unique(matches[matches >= 0])]] = True
    np.testing.assert_array_equal(ours[i], want)
  if not low_quality:  # Some boxes are missed: the case tells the rules apart.
    assert 0 < ours.sum() < (valid & ~crowd).sum()
