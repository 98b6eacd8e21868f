"""Sources: the synthetic generator and TFDS coco/2017 (mocked)."""

import io
import json
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from fcos_jax.data import synthetic
from fcos_jax.data.config import default_data_config
from fcos_jax.errors import DataError
from fcos_jax.data.pipeline import (build_eval_dataset, build_train_dataset,
                                    dataset_info)
from fcos_jax.data.sources import load_split
from coco_files import write_coco
from fcos_jax.data.tfds_coco import (COCO_CATEGORY_IDS,
                                     category_id_to_tfds_label,
                                     export_tfds_split,
                                     tfds_label_to_category_id)


# --- Synthetic -----------------------------------------------------------------


def test_synthetic_is_deterministic_reused_and_remade(tmp_path):
  a = synthetic.ensure_synthetic_dataset(str(tmp_path / "a"), 12, 4, 64, seed=3)
  b = synthetic.ensure_synthetic_dataset(str(tmp_path / "b"), 12, 4, 64, seed=3)
  assert open(a["train_json"]).read() == open(b["train_json"]).read()
  name = sorted(os.listdir(a["train_images"]))[5]
  assert (open(os.path.join(a["train_images"], name), "rb").read() ==
          open(os.path.join(b["train_images"], name), "rb").read())
  stamp = os.path.getmtime(a["train_json"])
  synthetic.ensure_synthetic_dataset(str(tmp_path / "a"), 12, 4, 64, seed=3)
  assert os.path.getmtime(a["train_json"]) == stamp  # Reused.
  synthetic.ensure_synthetic_dataset(str(tmp_path / "a"), 10, 4, 64, seed=4)
  assert len(json.load(open(a["train_json"]))["images"]) == 10  # Remade.
  assert not [p for p in os.listdir(tmp_path) if p.startswith(".synthetic")]


def _residual(img, anns):
  """L1 distance of each pixel from a linear background fitted outside the
  boxes: large on shapes, small on the background."""
  h, w, _ = img.shape
  outside = np.ones((h, w), bool)
  for a in anns:
    x, y, bw, bh = (int(round(v)) for v in a["bbox"])
    outside[y:y + bh, x:x + bw] = False
  yy, xx = np.mgrid[:h, :w]
  design = np.stack([np.ones(h * w), xx.ravel(), yy.ravel()], -1)
  pix = img.reshape(-1, 3).astype(np.float64)
  coef, *_ = np.linalg.lstsq(design[outside.ravel()], pix[outside.ravel()],
                             rcond=None)
  return np.abs(pix - design @ coef).sum(-1).reshape(h, w), outside


def test_synthetic_boxes_are_tight_around_the_drawn_shapes():
  crowds = empties = n_boxes = 0
  sizes = []
  for i in range(40):
    img, anns = synthetic.make_image(np.random.default_rng([1, i]), 96, 128)
    empties += not anns
    if not anns:
      continue
    res, outside = _residual(img, anns)
    strong = res > 150
    # Nothing drawn outside the boxes (background noise stays below 150).
    assert (strong & outside).sum() <= 2
    for a in anns:
      x, y, w, h = (int(round(v)) for v in a["bbox"])
      assert 0 <= x and 0 <= y and x + w <= 128 and y + h <= 96 and w > 0
      crowds += a["iscrowd"]
      n_boxes += 1
      sizes.append(max(w, h))
      inside = strong[y:y + h, x:x + w]
      # Tight: the shape touches all four sides of its box.
      assert inside[:, 0].any() and inside[:, -1].any()
      assert inside[0].any() and inside[-1].any()
  assert crowds >= 1 and empties >= 1 and n_boxes > 60
  assert min(sizes) <= 12 and max(sizes) >= 60


def test_synthetic_source_through_the_pipeline(tmp_path):
  c = default_data_config()
  c.synthetic.dir = str(tmp_path / "syn")
  c.synthetic.num_train, c.synthetic.num_val, c.synthetic.image_size = 16, 6, 64
  c.min_size, c.max_size, c.canvases = 64, 64, ((64, 64),)
  b = next(build_train_dataset(c, 4, 0, 1))
  assert b["image"].shape == (4, 64, 64, 3) and b["box_valid"].any(1).all()
  ev = build_eval_dataset(c, 4, 0, 1)
  assert ev.info.num_classes == 5 and ev.num_steps == 2
  assert sum(int(x["example_valid"].sum()) for x in ev) == 6


# --- TFDS ----------------------------------------------------------------------


def test_tfds_label_map_round_trip():
  assert len(COCO_CATEGORY_IDS) == 80 and len(set(COCO_CATEGORY_IDS)) == 80
  assert COCO_CATEGORY_IDS[0] == 1 and COCO_CATEGORY_IDS[-1] == 90
  missing = sorted(set(range(1, 91)) - set(COCO_CATEGORY_IDS))
  assert missing == [12, 26, 29, 30, 45, 66, 68, 69, 71, 83]
  labels = np.arange(80)
  np.testing.assert_array_equal(
      category_id_to_tfds_label(tfds_label_to_category_id(labels)), labels)
  assert category_id_to_tfds_label([12])[0] == -1


def _jpeg(h, w, seed):
  pixels = np.random.default_rng(seed).integers(0, 255, (h, w, 3), np.uint8)
  buf = io.BytesIO()
  Image.fromarray(pixels).save(buf, format="JPEG")
  return buf.getvalue()


# Three valid examples: (id, h, w, [(label, ymin, xmin, ymax, xmax, crowd)]).
TFDS_EXAMPLES = [
    (139, 40, 60, [(0, 0.1, 0.2, 0.5, 0.6, False), (79, 0.0, 0.0, 1.0, 0.5,
                                                     True)]),
    (285, 60, 40, [(11, 0.25, 0.25, 0.75, 0.5, False)]),
    (632, 40, 60, []),
]


def _mock_as_dataset(self, split, decoders=None, **kwargs):
  import tensorflow_datasets as tfds
  assert isinstance((decoders or {}).get("image"), tfds.decode.SkipDecoding)

  def gen():
    for k, (iid, h, w, objs) in enumerate(TFDS_EXAMPLES):
      yield {
          "image": _jpeg(h, w, k), "image/filename": f"{iid:012d}.jpg",
          "image/id": iid,
          "objects": {
              "area": np.array([int((o[3] - o[1]) * h * (o[4] - o[2]) * w)
                                for o in objs], np.int64),
              "bbox": np.array([o[1:5] for o in objs],
                               np.float32).reshape(-1, 4),
              "id": np.arange(len(objs), dtype=np.int64) + 10 * k,
              "is_crowd": np.array([o[5] for o in objs], bool),
              "label": np.array([o[0] for o in objs], np.int64)}}

  spec = {"image": tf.TensorSpec([], tf.string),
          "image/filename": tf.TensorSpec([], tf.string),
          "image/id": tf.TensorSpec([], tf.int64),
          "objects": {"area": tf.TensorSpec([None], tf.int64),
                      "bbox": tf.TensorSpec([None, 4], tf.float32),
                      "id": tf.TensorSpec([None], tf.int64),
                      "is_crowd": tf.TensorSpec([None], tf.bool),
                      "label": tf.TensorSpec([None], tf.int64)}}
  return tf.data.Dataset.from_generator(gen, output_signature=spec)


def _mock_tfds_export(tmp_path):
  """The validation split of TFDS_EXAMPLES exported: (json, images, a data
  config reading the export)."""
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=len(TFDS_EXAMPLES),
                              policy=tfds.testing.MockPolicy.USE_CODE,
                              as_dataset_fn=_mock_as_dataset):
    js, im = export_tfds_split("coco/2017", "validation",
                               export_dir=str(tmp_path / "export"))
  c = default_data_config()
  c.source = "tfds"
  c.tfds.export_dir = str(tmp_path / "export")
  return js, im, c


def test_tfds_export_and_pipeline(tmp_path):
  js, im, c = _mock_tfds_export(tmp_path)
  c.min_size, c.max_size, c.canvases = 40, 64, ((64, 64),)
  ev = build_eval_dataset(c, 2, 0, 1)
  batches = list(ev)
  data = json.load(open(js))
  assert [i["id"] for i in data["images"]] == [139, 285, 632]
  assert [(i["height"], i["width"]) for i in data["images"]] == [
      (40, 60), (60, 40), (40, 60)]
  anns = {a["id"]: a for a in data["annotations"]}
  np.testing.assert_allclose(anns[0]["bbox"], [0.2 * 60, 0.1 * 40, 0.4 * 60,
                                               0.4 * 40], rtol=1e-5)
  assert anns[0]["category_id"] == 1 and anns[1]["category_id"] == 90
  assert anns[1]["iscrowd"] == 1
  assert anns[10]["category_id"] == 13  # TFDS label 11 is COCO id 13.
  np.testing.assert_allclose(anns[10]["bbox"], [10, 15, 10, 30], rtol=1e-5)
  assert ev.info.num_classes == 80 and ev.info.gt_json == js
  assert ev.info.label_to_category_id == COCO_CATEGORY_IDS
  # Image bytes are copied unchanged.
  assert open(os.path.join(im, "000000000139.jpg"), "rb").read() == _jpeg(
      40, 60, 0)
  got = {int(i): (b["classes"][k][b["box_valid"][k]].tolist(),
                  b["boxes"][k][b["box_valid"][k]])
         for b in batches for k, i in enumerate(b["image_id"])
         if b["example_valid"][k]}
  assert sorted(got) == [139, 285, 632]
  assert got[285][0] == [11]  # Contiguous label = TFDS label.
  np.testing.assert_allclose(got[285][1], [[10, 15, 20, 45]], atol=1e-4)
  assert got[139][0] == [0, 79]  # Crowd kept in evaluation.


# --- Synthetic: never delete what it did not write -----------------------------


def test_synthetic_refuses_a_folder_it_did_not_make(tmp_path):
  d = tmp_path / "mine"
  d.mkdir()
  (d / "thesis.tex").write_text("years of work")
  # Even a params.json of the user's does not make the folder ours.
  (d / "params.json").write_text('{"lr": 0.1}')
  with pytest.raises(DataError) as e:
    synthetic.ensure_synthetic_dataset(str(d), 4, 2, 64, seed=0)
  msg = str(e.value)
  assert str(d) in msg and "thesis.tex" in msg
  assert "choose another data.synthetic.dir" in msg and "empty" in msg
  assert sorted(os.listdir(d)) == ["params.json", "thesis.tex"]
  assert (d / "thesis.tex").read_text() == "years of work"
  with pytest.raises(DataError, match="is a file, not a folder"):
    synthetic.ensure_synthetic_dataset(str(d / "thesis.tex"), 4, 2, 64, seed=0)


def test_synthetic_uses_an_empty_folder_and_remakes_only_its_own(tmp_path):
  d = tmp_path / "empty"
  d.mkdir()
  files = synthetic.ensure_synthetic_dataset(str(d), 4, 2, 64, seed=0)
  assert sorted(os.listdir(d)) == [synthetic.STAMP, "train", "train.json",
                                   "val", "val.json"]
  stamp = json.load(open(d / synthetic.STAMP))
  assert stamp["complete"] is True and stamp["params"]["num_train"] == 4
  # Ours (stamped), other params: remade; a file the user added stays.
  (d / "notes.txt").write_text("keep me")
  synthetic.ensure_synthetic_dataset(str(d), 3, 2, 64, seed=0)
  assert len(json.load(open(files["train_json"]))["images"]) == 3
  assert len(os.listdir(files["train_images"])) == 3
  assert (d / "notes.txt").read_text() == "keep me"


def test_synthetic_stamp_is_written_last(tmp_path, monkeypatch):
  """A crash mid-way leaves an "in progress" stamp: never reused as
  complete, but recognised as ours and remade."""
  d = str(tmp_path / "syn")
  real = synthetic.write_split

  def crash_on_val(out_dir, split, *args, **kw):
    if split == "val":
      raise KeyboardInterrupt
    return real(out_dir, split, *args, **kw)

  monkeypatch.setattr(synthetic, "write_split", crash_on_val)
  with pytest.raises(KeyboardInterrupt):
    synthetic.ensure_synthetic_dataset(d, 4, 2, 64, seed=0)
  assert json.load(open(os.path.join(d, synthetic.STAMP)))["complete"] is False
  assert not synthetic.is_complete(d, synthetic.dataset_params(4, 2, 64, 0))
  monkeypatch.setattr(synthetic, "write_split", real)
  files = synthetic.ensure_synthetic_dataset(d, 4, 2, 64, seed=0)
  assert len(json.load(open(files["val_json"]))["images"]) == 2
  assert synthetic.is_complete(d, synthetic.dataset_params(4, 2, 64, 0))


def test_synthetic_folder_of_the_earlier_generator_is_reused(tmp_path):
  """Folders made before the stamp (params.json, nothing else foreign)."""
  d = tmp_path / "old"
  files = synthetic.ensure_synthetic_dataset(str(d), 4, 2, 64, seed=0)
  (d / synthetic.STAMP).rename(d / "params.json")
  (d / "params.json").write_text(json.dumps(
      synthetic.dataset_params(4, 2, 64, 0)))
  mtime = os.path.getmtime(files["train_json"])
  synthetic.ensure_synthetic_dataset(str(d), 4, 2, 64, seed=0)
  assert os.path.getmtime(files["train_json"]) == mtime
  assert not (d / synthetic.STAMP).exists()
  synthetic.ensure_synthetic_dataset(str(d), 3, 2, 64, seed=0)  # Remade.
  assert sorted(os.listdir(d)) == [synthetic.STAMP, "train", "train.json",
                                   "val", "val.json"]


def test_generation_runs_through_chief_first_once(tmp_path, monkeypatch):
  from fcos_jax import runtime
  calls = []

  def chief_first(fn, name, timeout_s=3600):
    calls.append(name)
    return fn()

  monkeypatch.setattr(runtime, "chief_first", chief_first)
  c = default_data_config()
  c.synthetic.dir = str(tmp_path / "syn")
  c.synthetic.num_train, c.synthetic.num_val, c.synthetic.image_size = 4, 2, 64
  load_split(c, "train")
  assert calls == ["synthetic_data"]
  load_split(c, "val")  # Val, and the train categories: no second barrier,
  dataset_info(c, "val")  # so process 0 alone may call it later.
  assert calls == ["synthetic_data"]
  c.synthetic.num_train = 3  # Another dataset: made (collectively) again.
  load_split(c, "train")
  assert calls == ["synthetic_data"] * 2


# --- Categories of the evaluation split ------------------------------------------


def _two_splits(tmp_path, train_cats, val_cats):
  boxes = lambda i: [(2 + i, 3, 20, 14, 1, 0), (30, 20, 12, 18, 3, 0)]
  tr = write_coco(str(tmp_path / "train"), [(48, 64, boxes(i)) for i in
                                             range(4)], categories=train_cats)
  va = write_coco(str(tmp_path / "val"), [(48, 64, boxes(i)) for i in
                                           range(5)], categories=val_cats)
  c = default_data_config()
  c.source = "coco_format"
  c.coco.train_json, c.coco.train_images = tr
  c.coco.val_json, c.coco.val_images = va
  c.min_size, c.max_size, c.canvases = 48, 64, ((64, 64),)
  c.num_parallel_calls = 1
  return c


def test_val_categories_must_be_the_training_ones(tmp_path):
  c = _two_splits(tmp_path, ((1, "a"), (3, "c")), ((1, "a"), (2, "b"),
                                                   (3, "c")))
  with pytest.raises(DataError) as e:
    build_eval_dataset(c, 2, 0, 1)
  msg = str(e.value)
  assert c.coco.val_json in msg and c.coco.train_json in msg
  assert f"ids only in {c.coco.val_json}: [2]" in msg
  with pytest.raises(DataError, match=r"ids only in .*: \[2\]"):
    dataset_info(c, "val")
  load_split(c, "train")  # The training split sets the labels: fine.
  # A given list (e.g. WORKDIR/categories.json) is checked the same way.
  with pytest.raises(DataError, match=r"ids only in WORKDIR/categories.json:"
                     r" \[7\]"):
    load_split(c, "train", [{"id": 1, "name": "a"}, {"id": 3, "name": "c"},
                            {"id": 7, "name": "g"}], "WORKDIR/categories.json")
  # Only the val paths set (evaluation alone): the train categories are
  # needed, from train_json or given.
  train_json = c.coco.train_json
  c.coco.train_json = c.coco.train_images = ""
  with pytest.raises(DataError, match=r"data.coco.train_json is not set: .* or pass "
                     r"the run's categories"):
    dataset_info(c, "val")
  with pytest.raises(DataError, match=r"ids only in .*val.*: \[2\]"):
    dataset_info(c, "val", categories=[{"id": 1, "name": "a"},
                                       {"id": 3, "name": "c"}])
  c.coco.train_json = train_json
  # Same ids, another name.
  c2 = _two_splits(tmp_path / "renamed", ((1, "a"), (3, "c")), ((1, "a"),
                                                                 (3, "cat")))
  with pytest.raises(DataError, match=r"3 \('c' vs 'cat'\)"):
    dataset_info(c2, "val")


def test_val_check_parses_each_json_once(tmp_path, monkeypatch):
  from fcos_jax import storage
  c = _two_splits(tmp_path, ((1, "a"), (3, "c")), ((1, "a"), (3, "c")))
  load_split(c, "train")
  reads = []
  real = storage.read_text
  monkeypatch.setattr(storage, "read_text",
                      lambda p: reads.append(str(p)) or real(p))
  load_split(c, "val")
  assert reads == [c.coco.val_json]  # The train categories: remembered.
  with open(c.coco.train_json) as f:  # Changed file: read again.
    data = json.load(f)
  data["categories"].append({"id": 9, "name": "i"})
  with open(c.coco.train_json, "w") as f:
    json.dump(data, f)
  os.utime(c.coco.train_json, (1, 1))
  reads.clear()
  with pytest.raises(DataError, match=r"\[9\]"):
    load_split(c, "val")
  assert sorted(reads) == sorted([c.coco.val_json, c.coco.train_json])


def _perfect_detections(ev):
  """The evaluation split's own boxes as detections (score 1), in original
  pixels, as eval_step would give them."""
  out = {k: [] for k in ("image_id", "boxes", "scores", "classes", "valid")}
  for b in ev:
    keep = b["example_valid"]
    scale = (b["image_hw"][:, :1] / np.maximum(b["orig_hw"][:, :1], 1))[
        :, :, None]
    out["image_id"].append(b["image_id"][keep])
    out["boxes"].append((b["boxes"] / np.maximum(scale, 1e-9))[keep])
    out["scores"].append(np.ones(b["classes"].shape, np.float32)[keep])
    out["classes"].append(b["classes"][keep])
    out["valid"].append((b["box_valid"] & ~b["is_crowd"])[keep])
  return {k: np.concatenate(v) for k, v in out.items()}


def test_perfect_detections_score_ap_1(tmp_path):
  from fcos_jax.evaluation.coco_eval import coco_evaluate
  from fcos_jax.inference.coco_results import detections_to_coco
  from fcos_jax.data.coco_format import load_coco_split
  cats = ((1, "a"), (3, "c"))
  c = _two_splits(tmp_path, cats, cats)
  train_info = dataset_info(c, "train")
  ev = build_eval_dataset(c, 2, 0, 1)
  assert ev.info.label_to_category_id == train_info.label_to_category_id
  dets = _perfect_detections(ev)
  results = detections_to_coco(dets, train_info.label_to_category_id)
  metrics = coco_evaluate(ev.info.gt_json, results, dets["image_id"])
  assert metrics["AP"] == pytest.approx(1.0)
  # What the check prevents: a val JSON listing {1, 2, 3}, its labels taken
  # from it alone, scores the same perfect detections at AP 0.5.
  c3 = _two_splits(tmp_path / "three", cats, ((1, "a"), (2, "b"), (3, "c")))
  _, val_only = load_coco_split(c3.coco.val_json, c3.coco.val_images)
  wrong = detections_to_coco(dets, val_only.label_to_category_id)
  assert coco_evaluate(c3.coco.val_json, wrong, dets["image_id"])[
      "AP"] == pytest.approx(0.5)


def test_tfds_val_ground_truth_must_list_the_80_categories(tmp_path):
  js, _, c = _mock_tfds_export(tmp_path)
  gt = json.load(open(js))
  c.tfds.val_gt_json = str(tmp_path / "instances_val2017.json")
  json.dump(gt, open(c.tfds.val_gt_json, "w"))
  assert dataset_info(c, "val").gt_json == c.tfds.val_gt_json
  gt["categories"] = gt["categories"][:79]  # An annotation file of 79.
  json.dump(gt, open(c.tfds.val_gt_json, "w"))
  os.utime(c.tfds.val_gt_json, (1, 1))
  with pytest.raises(DataError, match=r"instances_val2017.json: its categories"
                     r" differ .*ids only in the training split .*\[90\]"):
    dataset_info(c, "val")
