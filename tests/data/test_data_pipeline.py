"""Pipelines: per-process slices, exact resume, shared canvases, eval padding,
label mapping, global batch assembly."""

import json

import jax
import numpy as np
import pytest

from fcos_jax.data.config import default_data_config
from fcos_jax.data.global_batch import to_global_batch
from fcos_jax.data.pipeline import (bucket_choices, build_eval_dataset,
                                    build_train_dataset)
from coco_files import random_images, write_coco

CANVASES = ((64, 96), (96, 64))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  d = tmp_path_factory.mktemp("tiny")
  # Landscape and portrait images; every 5th has no box; category ids with
  # gaps to exercise the label mapping.
  images = random_images(30, seed=1, sizes=((48, 64), (64, 48), (48, 60)),
                         categories=(3, 7, 42), empty_every=5)
  images[1][2].append((2, 2, 6, 6, 7, 1))  # A crowd box.
  js, im = write_coco(str(d), images, categories=((42, "c"), (3, "a"),
                                                  (7, "b")))
  return js, im, images


def _cfg(tiny, **kw):
  c = default_data_config()
  c.source = "coco_format"
  c.coco.train_json = c.coco.val_json = tiny[0]
  c.coco.train_images = c.coco.val_images = tiny[1]
  c.min_size, c.max_size, c.canvases = (40, 48), 80, CANVASES
  c.max_boxes = 4
  c.num_parallel_calls = 2
  for k, v in kw.items():
    setattr(c, k, v)
  return c


def _take(it, n):
  return [next(it) for _ in range(n)]


def test_train_processes_are_disjoint_cover_and_share_canvases(tiny):
  cfg = _cfg(tiny)
  streams = [build_train_dataset(cfg, 2, p, 2, seed=5) for p in range(2)]
  seen = [set(), set()]
  for _ in range(16):
    batches = [next(s) for s in streams]
    assert batches[0]["image"].shape == batches[1]["image"].shape
    for p, b in enumerate(batches):
      assert b["image"].shape[1:3] in CANVASES
      assert b["example_valid"].all() and b["box_valid"].any(axis=1).all()
      seen[p] |= set(b["image_id"].tolist())
  non_empty = {i + 1 for i, (_, _, boxes) in enumerate(tiny[2])
               if any(not c for *_, c in boxes)}
  assert not seen[0] & seen[1]
  assert seen[0] | seen[1] == non_empty  # Empty images are skipped.


def test_resume_equals_uninterrupted_stream(tiny):
  cfg = _cfg(tiny)
  full = _take(build_train_dataset(cfg, 3, 1, 2, seed=9), 12)
  resumed = _take(build_train_dataset(cfg, 3, 1, 2, seed=9, start_step=7), 5)
  for a, b in zip(full[7:], resumed):
    assert a.keys() == b.keys()
    for k in a:
      np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  other = _take(build_train_dataset(cfg, 3, 1, 2, seed=10), 12)
  assert any((a["image_id"] != b["image_id"]).any() for a, b in zip(full, other))


def test_bucket_choices_are_balanced_and_shift_invariant():
  c = bucket_choices(3, 0, 10000, [3, 1])
  np.testing.assert_array_equal(c[5000:7000], bucket_choices(3, 5000, 7000,
                                                             [3, 1]))
  assert abs(c[:4096].mean() - 0.25) < 1e-3  # Exact mix within a block.
  assert set(bucket_choices(3, 0, 100, [0, 5])) == {1}


def test_eval_every_image_once_with_padding(tiny):
  cfg = _cfg(tiny)
  n_proc, B = 3, 4
  runs = [list(build_eval_dataset(cfg, B, p, n_proc)) for p in range(n_proc)]
  steps = {len(r) for r in runs}
  assert len(steps) == 1  # Every process runs the same number of steps.
  ids = []
  for t in range(len(runs[0])):
    shapes = {r[t]["image"].shape for r in runs}
    assert len(shapes) == 1  # One canvas per step on all processes.
    for r in runs:
      b = r[t]
      ids += b["image_id"][b["example_valid"]].tolist()
      assert (b["image_id"][~b["example_valid"]] == -1).all()
      assert not b["image"][~b["example_valid"]].any()
  assert sorted(ids) == list(range(1, 31))  # Empty images included, once.
  assert sum((~r[t]["example_valid"]).sum() for r in runs
             for t in range(len(r))) > 0
  # Evaluation keeps crowd boxes, flagged; image 2 (id 2) has one.
  crowd = [b["is_crowd"][b["image_id"] == 2] for r in runs for b in r]
  assert sum(int(c.sum()) for c in crowd) == 1
  # No flip and the top of the scale range: short side 48 for all images.
  for r in runs:
    for b in r:
      hw = b["image_hw"][b["example_valid"]]
      assert (hw.min(axis=1) == 48).all()


def test_labels_map_back_to_category_ids(tiny):
  cfg = _cfg(tiny, max_boxes=8)
  ev = build_eval_dataset(cfg, 5, 0, 1)
  info = ev.info
  assert info.num_classes == 3
  assert info.label_to_category_id == (3, 7, 42)
  assert info.category_names == ("a", "b", "c")
  assert info.gt_json == tiny[0]
  anns = json.load(open(tiny[0]))["annotations"]
  for b in ev:
    for i in np.flatnonzero(b["example_valid"]):
      v = b["box_valid"][i]
      scale = b["image_hw"][i][0] / b["orig_hw"][i][0]
      got = sorted(zip(info.labels_to_category_ids(b["classes"][i][v]).tolist(),
                       np.round(b["boxes"][i][v] / scale, 3).tolist()))
      want = sorted((a["category_id"],
                     [a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2],
                      a["bbox"][1] + a["bbox"][3]])
                    for a in anns if a["image_id"] == b["image_id"][i])
      assert [c for c, _ in got] == [c for c, _ in want]
      np.testing.assert_allclose([x for _, x in got], [x for _, x in want],
                                 atol=1e-3)
      assert {info.category_id_to_label[c] for c, _ in want} == set(
          b["classes"][i][v].tolist())


def test_truncated_boxes_are_counted(tiny):
  it = build_train_dataset(_cfg(tiny, max_boxes=1), 4, 0, 1, seed=0)
  batches = _take(it, 6)
  assert all(b["box_valid"].sum(1).max() == 1 for b in batches)
  assert it.num_truncated_boxes > 0


def test_to_global_batch_shards_the_batch_axis():
  mesh = jax.make_mesh((8,), ("data",))
  local = {"image": np.arange(8 * 2 * 3, dtype=np.uint8).reshape(8, 2, 3),
           "image_id": np.arange(8, dtype=np.int32)}
  out = to_global_batch(local, mesh)
  assert out["image"].shape == (8, 2, 3)
  assert len(out["image"].sharding.device_set) == 8
  np.testing.assert_array_equal(np.asarray(out["image"]), local["image"])
  with pytest.raises(ValueError, match="batch"):
    to_global_batch(local, mesh, data_axis="batch")


def test_images_read_through_storage_where_tf_cannot(tiny, monkeypatch):
  """Where TF's own filesystems don't reach a path (e.g. gs:// on the GCS
  emulator with EPATH_USE_TF=false), images are read by storage.read_bytes:
  the same batches."""
  from fcos_jax import storage
  cfg = _cfg(tiny, max_boxes=8)
  want_eval = list(build_eval_dataset(cfg, 5, 0, 1))
  want_train = _take(build_train_dataset(cfg, 3, 0, 1, seed=2), 3)
  reads = []
  real = storage.read_bytes
  monkeypatch.setattr(storage, "tf_reaches", lambda p: False)
  monkeypatch.setattr(storage, "read_bytes",
                      lambda p: reads.append(p) or real(p))
  got_eval = list(build_eval_dataset(cfg, 5, 0, 1))
  assert len(set(reads)) == 30  # Every image, through storage.
  got_train = _take(build_train_dataset(cfg, 3, 0, 1, seed=2), 3)
  for want, got in ((want_eval, got_eval), (want_train, got_train)):
    assert len(want) == len(got)
    for a, b in zip(want, got):
      for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
