"""mmdetection's released models as runs, through the real commands: a
random checkpoint with a registry model's exact names and shapes, saved as
mmdetection saves it ({"meta", "state_dict"}, torch tensors), converted by
`fcos-convert --mmdet FILE --config configs/zoo.py:MODEL`, then scored by
evaluate.py on a tiny COCO-format set. (The numbers themselves are checked
against PyTorch restatements in tests/convert/test_convert_mmdet.py.)"""

import json
import os
import subprocess
import sys

import pytest

from cli_runs import ROOT
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
  """Two images of three COCO categories, with all 80 declared."""
  import coco_files as testing
  from fcos_jax.convert import torchvision as tv
  cats = [(c["id"], c["name"]) for c in tv.coco_categories()]
  images = testing.random_images(2, sizes=((100, 150), (150, 100)),
                                 categories=(1, 18, 90))
  return testing.write_coco(str(tmp_path_factory.mktemp("coco")), images,
                            categories=cats, fmt="jpg")


def _run(args):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1",
             TF_CPP_MIN_LOG_LEVEL="2")
  proc = subprocess.run([sys.executable] + args, cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, (f"{args[:2]} failed ({proc.returncode}):\n"
                                f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
  return proc


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
  data = ["--config.data.source=coco_format",
          f"--config.data.coco.val_json={gt_json}",
          f"--config.data.coco.val_images={img_dir}",
          "--config.data.min_size=128", "--config.data.max_size=192",
          "--config.data.canvases=((192,192),)",  # One compile.
          "--config.eval_batch_size=1",
          "--config.model.inference.score_thresh=0.02"]
  _run(["-m", "fcos_jax.cli.convert", f"--mmdet={pth}",
        f"--config=configs/zoo.py:{model}", f"--workdir={workdir}"] + data)
  config = json.loads((workdir / "config.json").read_text())
  assert (config["model"]["quality"]["name"],
          config["model"]["box"]["name"]) == MODELS[model]
  assert config["model"]["inference"]["min_box_size"] == 0
  assert config["model"]["inference"]["clip_boxes"] == (
      MODELS[model][0] != "tood")
  assert config["model"]["inference"]["score_thresh"] == 0.02

  proc = _run([str(ROOT / "evaluate.py"), f"--workdir={workdir}"])
  assert "COCO bbox evaluation at step 0 on 2 images" in proc.stdout
  metrics = json.loads((workdir / "eval" / "metrics_step0.json").read_text())
  assert metrics["num_images"] == 2 and 0 <= metrics["AP"] <= 1
  dets = json.loads((workdir / "eval" / "detections_step0.json").read_text())
  assert len(dets) > 20
  ids = {c["id"] for c in json.loads(open(gt_json).read())["categories"]}
  assert {d["category_id"] for d in dets} <= ids
  assert all(0 < d["score"] <= 1 and d["bbox"][2] > 0 and d["bbox"][3] > 0
             for d in dets)
