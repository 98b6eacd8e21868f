"""mmdetection's released models as runs, through the real commands: a
random checkpoint with a registry model's exact names and shapes, saved as
mmdetection saves it ({"meta", "state_dict"}, torch tensors), converted by
`fcos-convert --mmdet FILE --config configs/zoo.py:MODEL`, then scored by
evaluate.py on a tiny COCO-format set. (The numbers themselves are checked
against PyTorch restatements in tests/convert/test_convert_mmdet.py.)"""

import json
import os

import pytest

import coco_files
from cli_runs import ROOT, run_python
from mmdet_checkpoints import random_mmdet_state_dict, save_state_dict

# A registry model (its file named as its URL names it) -> the quality and
# box parts its run records: the anchor-delta box on the FCOS head (ATSS)
# and on TOOD's, whose boxes are not clipped. GFL's run also goes through
# predict.py (tests/convert/test_convert_mmdet.py); VFNet's and the other
# models' checkpoints convert onto their models there (every registry
# model) and their runs train and evaluate in tests/cli/test_*_cli.py.
MODELS = {
    "atss_r50_fpn_1x_coco": ("centerness", "anchor_deltas"),
    "tood_r50_fpn_anchor_based_1x_coco": ("tood", "anchor_deltas"),
}


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
  import coco_files
  return coco_files.write_coco80(str(tmp_path_factory.mktemp("coco")))


@pytest.mark.slow
@pytest.mark.torch
@pytest.mark.parametrize("model", sorted(MODELS))
def test_released_model_converts_and_evaluates(tmp_path, coco, model):
  pytest.importorskip("torch")
  from fcos_jax import registry
  from fcos_jax.convert import mmdet
  release = registry.get(model, "mmdet")
  pth = tmp_path / os.path.basename(release.url)  # As downloaded.
  save_state_dict(pth, random_mmdet_state_dict(mmdet.published_config(model)))
  gt_json, img_dir = coco
  workdir = tmp_path / "run"
  run_python(["-m", "fcos_jax.cli.convert", f"--mmdet={pth}",
              f"--config=configs/zoo.py:{model}", f"--workdir={workdir}"]
             + coco_files.val_flags(gt_json, img_dir))
  config = json.loads((workdir / "config.json").read_text())
  assert (config["model"]["quality"]["name"],
          config["model"]["box"]["name"]) == MODELS[model]
  assert config["model"]["inference"]["min_box_size"] == 0
  assert config["model"]["inference"]["clip_boxes"] == (
      MODELS[model][0] != "tood")
  assert config["model"]["inference"]["score_thresh"] == 0.02

  proc = run_python([str(ROOT / "evaluate.py"), f"--workdir={workdir}"])
  assert "COCO bbox evaluation at step 0 on 2 images" in proc.stdout
  metrics = json.loads((workdir / "eval" / "metrics_step0.json").read_text())
  assert metrics["num_images"] == 2 and 0 <= metrics["AP"] <= 1
  dets = json.loads((workdir / "eval" / "detections_step0.json").read_text())
  assert len(dets) > 20
  ids = {c["id"] for c in json.loads(open(gt_json).read())["categories"]}
  assert {d["category_id"] for d in dets} <= ids
  assert all(0 < d["score"] <= 1 and d["bbox"][2] > 0 and d["bbox"][3] > 0
             for d in dets)
