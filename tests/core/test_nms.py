"""Device NMS against a plain greedy NumPy NMS and torchvision.ops.batched_nms."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fcos_jax.core.nms import batched_nms


def numpy_greedy_nms(boxes, scores, classes, valid, iou_threshold, max_output):
  """Textbook greedy NMS: float32 IoU compared with a float64 threshold."""
  boxes = boxes.astype(np.float32)
  order = [i for i in np.argsort(-scores.astype(np.float64), kind="stable")
           if valid[i]]
  suppressed = np.zeros(len(scores), bool)
  keep = []
  for i in order:
    if suppressed[i]:
      continue
    keep.append(i)
    for j in order:
      if suppressed[j] or j == i or classes[j] != classes[i]:
        continue
      w = max(np.float32(0), min(boxes[i, 2], boxes[j, 2]) -
              max(boxes[i, 0], boxes[j, 0]))
      h = max(np.float32(0), min(boxes[i, 3], boxes[j, 3]) -
              max(boxes[i, 1], boxes[j, 1]))
      inter = np.float32(w * h)
      area_i = np.float32((boxes[i, 2] - boxes[i, 0]) * (boxes[i, 3] - boxes[i, 1]))
      area_j = np.float32((boxes[j, 2] - boxes[j, 0]) * (boxes[j, 3] - boxes[j, 1]))
      with np.errstate(invalid="ignore"):  # 0/0 for two empty boxes: NaN,
        iou = np.float32(inter / np.float32(area_i + area_j - inter))  # kept.
      if float(iou) > iou_threshold:
        suppressed[j] = True
  return keep[:max_output]


def random_case(rng, n, num_classes, ties=False, valid_frac=1.0, size=60.0):
  """Clustered boxes so that many overlap; optional duplicates and ties."""
  centres = rng.uniform(0, 100, (max(n // 6, 1), 2))
  c = centres[rng.integers(0, len(centres), n)] + rng.normal(0, 4, (n, 2))
  wh = rng.uniform(5, size, (n, 2))
  boxes = np.concatenate([c - wh / 2, c + wh / 2], -1).astype(np.float32)
  scores = rng.uniform(0, 1, n).astype(np.float32)
  if ties:
    scores = np.round(scores * 4) / 4  # Only 5 distinct values.
    dup = rng.integers(0, n, n // 4)
    boxes[rng.integers(0, n, n // 4)] = boxes[dup]  # Exact duplicates.
  classes = rng.integers(0, num_classes, n).astype(np.int32)
  valid = rng.uniform(size=n) < valid_frac
  return boxes, scores.astype(np.float32), classes, valid


def run_nms(boxes, scores, classes, valid, iou, k):
  keep, keep_valid = batched_nms(jnp.asarray(boxes), jnp.asarray(scores),
                                 jnp.asarray(classes), jnp.asarray(valid),
                                 iou_threshold=iou, max_output=k)
  keep, keep_valid = np.asarray(keep), np.asarray(keep_valid)
  # Valid slots come first, then padding with index 0.
  n_kept = int(keep_valid.sum())
  assert keep_valid[:n_kept].all() and not keep_valid[n_kept:].any()
  assert (keep[n_kept:] == 0).all()
  return list(keep[:n_kept])


CASES = [
    # (seed, n, classes, ties, valid_frac, iou, k)
    (0, 50, 1, False, 1.0, 0.5, 100),   # fewer candidates than K
    (1, 300, 3, False, 1.0, 0.6, 20),   # K cuts the output
    (2, 300, 3, True, 1.0, 0.6, 100),   # ties and duplicates
    (3, 200, 2, True, 0.5, 0.3, 50),    # invalid entries
    (4, 400, 5, False, 0.8, 0.7, 100),
    (5, 64, 1, True, 1.0, 0.0, 100),    # any overlap suppresses
    (6, 64, 2, False, 1.0, 1.0, 100),   # nothing suppresses
    (7, 500, 4, False, 1.0, 0.6, 100),
]


@pytest.mark.parametrize("seed,n,num_classes,ties,valid_frac,iou,k", CASES)
def test_matches_numpy_greedy(seed, n, num_classes, ties, valid_frac, iou, k):
  rng = np.random.default_rng(seed)
  boxes, scores, classes, valid = random_case(rng, n, num_classes, ties,
                                              valid_frac)
  got = run_nms(boxes, scores, classes, valid, iou, k)
  want = numpy_greedy_nms(boxes, scores, classes, valid, iou, k)
  assert len(want) > 0
  assert got == want


def threshold_case():
  # IoU of box 1 with box 0 is 50/100 = 0.5 exactly in float32, so it
  # survives at 0.5. IoU of box 3 with box 2 is 60/100, float32 0.6000000238
  # > 0.6, which torchvision (float32 IoU vs double threshold) suppresses;
  # a naive float32 comparison would keep it.
  boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 5], [20, 0, 30, 10],
                    [20, 0, 30, 6]], np.float32)
  scores = np.array([0.9, 0.8, 0.7, 0.6], np.float32)
  classes = np.zeros(4, np.int32)
  valid = np.ones(4, bool)
  expected = {0.49: [0, 2], 0.5: [0, 1, 2], 0.6: [0, 1, 2],
              0.61: [0, 1, 2, 3]}
  return boxes, scores, classes, valid, expected


def test_iou_exactly_at_threshold():
  boxes, scores, classes, valid, expected = threshold_case()
  for iou, want in expected.items():
    assert run_nms(boxes, scores, classes, valid, iou, 10) == want
    assert numpy_greedy_nms(boxes, scores, classes, valid, iou, 10) == want


@pytest.mark.torch
def test_iou_at_threshold_matches_torchvision():
  torch = pytest.importorskip("torch")
  tv_ops = pytest.importorskip("torchvision.ops")
  boxes, scores, classes, _, expected = threshold_case()
  for iou, want in expected.items():
    got = tv_ops.batched_nms(torch.from_numpy(boxes), torch.from_numpy(scores),
                             torch.from_numpy(classes), iou).tolist()
    assert got == want


def test_class_aware_and_edge_cases():
  box = np.array([[0, 0, 10, 10]] * 3, np.float32)
  scores = np.array([0.5, 0.9, 0.7], np.float32)
  # Same box, different classes: none suppresses another.
  assert run_nms(box, scores, np.array([0, 1, 2], np.int32), np.ones(3, bool),
                 0.5, 5) == [1, 2, 0]
  # Same box and class: only the best survives (all others suppressed).
  assert run_nms(box, scores, np.zeros(3, np.int32), np.ones(3, bool),
                 0.5, 5) == [1]
  # Equal scores: the lower index wins.
  assert run_nms(box, np.full(3, 0.5, np.float32), np.zeros(3, np.int32),
                 np.ones(3, bool), 0.5, 5) == [0]
  # No valid candidate.
  assert run_nms(box, scores, np.zeros(3, np.int32), np.zeros(3, bool),
                 0.5, 5) == []


def test_vmap_and_jit_batch():
  rng = np.random.default_rng(11)
  cases = [random_case(rng, 120, 3, ties=b % 2 == 1, valid_frac=0.2 + 0.2 * b)
           for b in range(4)]
  stacked = [np.stack(x) for x in zip(*cases)]
  fn = jax.jit(jax.vmap(lambda b, s, c, v: batched_nms(b, s, c, v, 0.6, 30)))
  keep, keep_valid = (np.asarray(x) for x in fn(*stacked))
  for b, case in enumerate(cases):
    want = numpy_greedy_nms(*case, 0.6, 30)
    assert list(keep[b][keep_valid[b]]) == want
    assert keep_valid[b].sum() == len(want)


def test_rejects_batched_input():
  with pytest.raises(ValueError, match="boxes \\[N, 4\\]"):
    batched_nms(jnp.zeros((2, 5, 4)), jnp.zeros((2, 5)), jnp.zeros((2, 5), int),
                jnp.ones((2, 5), bool), iou_threshold=0.5, max_output=3)


@pytest.mark.torch
@pytest.mark.parametrize("seed,n,dups", [(20, 200, False), (21, 300, True),
                                         (22, 2000, False), (23, 1500, True)])
def test_matches_torchvision(seed, n, dups):
  """n > 1000 takes torchvision's per-class path, n <= 1000 its offset trick."""
  torch = pytest.importorskip("torch")
  tv_ops = pytest.importorskip("torchvision.ops")
  rng = np.random.default_rng(seed)
  boxes, scores, classes, _ = random_case(rng, n, 4)
  if dups:
    # Exact duplicate rows (box, score, class): ties whose order torch's sort
    # leaves open, but whose kept rows are the same either way.
    src, dst = rng.integers(0, n, n // 4), rng.integers(0, n, n // 4)
    boxes[dst], scores[dst], classes[dst] = boxes[src], scores[src], classes[src]
  valid = np.ones(n, bool)
  got = run_nms(boxes, scores, classes, valid, 0.6, n)  # Keep all NMS keeps.
  want = tv_ops.batched_nms(torch.from_numpy(boxes), torch.from_numpy(scores),
                            torch.from_numpy(classes), 0.6).numpy()
  assert len(want) > 10
  rows = lambda idx: [tuple(boxes[i]) + (scores[i], classes[i]) for i in idx]
  assert rows(got) == rows(want)
  if not dups:
    assert got == list(want)
