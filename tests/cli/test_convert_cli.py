"""fcos-convert (python -m fcos_jax.cli.convert): torchvision's 91-slot
COCO FCOS -> an 80-class workdir that fcos-evaluate and fcos-predict take
like a trained run.

The state dict is made here with torchvision's names and shapes (random
values), so these tests need no torch; the parity tests in
test_convert_torchvision.py compare the numbers with torchvision itself."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from fcos_jax.convert import torchvision as tv
from fcos_jax.model import config as presets

ROOT = pathlib.Path(__file__).resolve().parents[2]


def random_torchvision_state_dict(seed=0):
  """A `fcos_resnet50_fpn(num_classes=91)` state dict of NumPy arrays:
  He-scaled kernels, BN statistics near (0, 1), class bias -4.6 (the prior)
  on the 80 used slots and -20 on the 11 unused ones."""
  cfg = presets.torchvision(num_classes=tv.TORCHVISION_COCO_SLOTS)
  rng = np.random.default_rng(seed)
  sd = {}
  for name, (path, shape) in tv.fcos_state_dict_names(cfg).items():
    leaf = path[-1]
    shape = tv.torch_shape(shape, leaf)
    if leaf == "kernel":
      fan_in = int(np.prod(shape[1:]))
      v = rng.normal(size=shape) * np.sqrt(1.0 / fan_in)
    elif leaf in ("scale", "var"):
      v = rng.uniform(0.8, 1.2, shape)
    elif leaf in ("mean", "bias"):
      v = 0.05 * rng.normal(size=shape)
    else:
      raise AssertionError(name)
    sd[name] = v.astype(np.float32)
  bias = np.full(tv.TORCHVISION_COCO_SLOTS, -20.0, np.float32)
  ids = [c["id"] for c in tv.coco_categories()]
  bias[ids] = -4.6 + 0.001 * np.arange(len(ids))
  sd["head.classification_head.cls_logits.bias"] = bias
  return sd


def test_slots_are_mapped_by_coco_category_id():
  sd = random_torchvision_state_dict()
  cfg, params, cats = tv.convert_coco_detector(sd, score_thresh=0.1)
  assert cfg.num_classes == len(cats) == 80 and cfg.inference.score_thresh == 0.1
  assert cfg.location_stride == "canvas"
  assert cats[0] == {"id": 1, "name": "person"}
  assert cats[11] == {"id": 13, "name": "stop sign"}  # id 12 is unused.
  assert cats[-1] == {"id": 90, "name": "toothbrush"}
  ids = [c["id"] for c in cats]
  np.testing.assert_array_equal(
      params["head"]["cls_logits"]["bias"],
      sd["head.classification_head.cls_logits.bias"][ids])
  kernel = sd["head.classification_head.cls_logits.weight"]  # OIHW
  np.testing.assert_array_equal(params["head"]["cls_logits"]["kernel"],
                                kernel[ids].transpose(2, 3, 1, 0))
  assert (params["head"]["cls_logits"]["bias"] > -5).all()


def _env():
  return dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1",
              TF_CPP_MIN_LOG_LEVEL="2")


def _run(args, check=True):
  proc = subprocess.run([sys.executable] + args, cwd=ROOT, env=_env(),
                        capture_output=True, text=True, timeout=900)
  if check and proc.returncode != 0:
    raise AssertionError(f"{args[:2]} failed ({proc.returncode}):\n"
                         f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
  return proc


@pytest.mark.slow
def test_converted_workdir_evaluates_and_predicts_like_a_run(tmp_path):
  import coco_files as testing
  sd_path = tmp_path / "fcos_coco.npz"
  np.savez(sd_path, **random_torchvision_state_dict())
  cats = [(c["id"], c["name"]) for c in tv.coco_categories()]
  images = testing.random_images(2, sizes=((100, 150), (150, 100)),
                                 categories=(1, 18, 90))
  gt_json, img_dir = testing.write_coco(str(tmp_path / "coco"), images,
                                        categories=cats, fmt="jpg")
  workdir = tmp_path / "converted"
  data = ["--config.data.source=coco_format",
          f"--config.data.coco.val_json={gt_json}",
          f"--config.data.coco.val_images={img_dir}",
          "--config.data.min_size=128", "--config.data.max_size=192",
          "--config.data.canvases=((128,192),(192,128))",
          "--config.eval_batch_size=1", "--config.model.inference.score_thresh=0.05",
          "--config.compilation_cache_dir="]
  _run(["-m", "fcos_jax.cli.convert", f"--torchvision={sd_path}",
        f"--workdir={workdir}"] + data)
  saved = json.loads((workdir / "categories.json").read_text())["categories"]
  assert [c["id"] for c in saved] == [c for c, _ in cats]
  # A second conversion into the same workdir is refused without --overwrite.
  proc = _run(["-m", "fcos_jax.cli.convert", f"--torchvision={sd_path}",
               f"--workdir={workdir}"], check=False)
  assert proc.returncode == 1 and "--overwrite" in proc.stderr

  proc = _run([str(ROOT / "evaluate.py"), f"--workdir={workdir}"])
  assert "COCO bbox evaluation at step 0 on 2 images" in proc.stdout
  want = json.loads((workdir / "eval" / "detections_step0.json").read_text())
  assert len(want) > 20
  assert {r["category_id"] for r in want} <= {c for c, _ in cats}

  out = tmp_path / "pred"
  _run([str(ROOT / "predict.py"), f"--workdir={workdir}",
        f"--images={img_dir}", f"--out={out}", "--noexif"])
  got = json.loads((out / "detections.json").read_text())
  names = dict(cats)
  gt = json.loads(pathlib.Path(gt_json).read_text())
  ids = {im["file_name"]: im["id"] for im in gt["images"]}
  for r in got:
    assert r.pop("category_name") == names[r["category_id"]]
    r["image_id"] = ids[os.path.basename(r.pop("file_name"))]
  key = lambda r: (r["image_id"], -r["score"], r["category_id"], r["bbox"])
  assert sorted(got, key=key) == sorted(want, key=key)

  # The Python API on the .pth/.npz directly: the same detections.
  from fcos_jax.inference.detector import Detector
  det = Detector.from_torchvision(str(sd_path), score_thresh=0.05,
                                  min_size=128, max_size=192,
                                  canvases=((128, 192), (192, 128)))
  paths = sorted(os.path.join(img_dir, f) for f in os.listdir(img_dir))
  for path, r in zip(paths, det(paths, exif=False)):
    mine = sorted((round(float(s), 5), n) for s, n in zip(r["scores"],
                                                          r["names"]))
    image_id = ids[os.path.basename(path)]
    theirs = sorted((d["score"], names[d["category_id"]]) for d in want
                    if d["image_id"] == image_id)
    assert mine == theirs
