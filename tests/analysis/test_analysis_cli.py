"""analyze.py and the RPN config end to end, on tiny synthetic runs: every
analysis prints its table and writes its files; the class-agnostic RPN
trains with train.py and is evaluated by average recall."""

import json
import os
import pathlib
import subprocess
import sys

import pytest
from cli_runs import run, tiny_args

ROOT = pathlib.Path(__file__).resolve().parents[2]


def analyze(*args):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1",
             TF_CPP_MIN_LOG_LEVEL="2")
  proc = subprocess.run([sys.executable, str(ROOT / "analyze.py")] + list(args),
                        cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=600)
  if proc.returncode != 0:
    raise AssertionError(f"analyze.py {args[0]} failed ({proc.returncode}):\n"
                         f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
  return proc


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A 2-step detector; a 0 threshold so that its evaluation has boxes."""
  tmp = tmp_path_factory.mktemp("analyze_run")
  workdir = tmp / "run"
  run("train.py", workdir, tiny_args(tmp, steps=2, **{
      "model.inference.score_thresh": 0.0}))
  return workdir


@pytest.mark.slow
def test_every_analysis_of_a_run(trained):
  out = trained / "analysis"
  proc = analyze("bpr", f"--workdir={trained}")
  assert "Best possible recall on the val split (8 images)" in proc.stdout
  assert "RetinaNet anchors, IoU >= 0.4 + low-quality matches" in proc.stdout
  assert "images/s" in proc.stderr
  bpr = json.loads((out / "bpr_val.json").read_text())
  assert len(bpr["settings"]) == 6
  assert all(0 <= s["bpr"] <= 1 and s["boxes"] > 0
             for s in bpr["settings"].values())

  proc = analyze("ambiguity", f"--workdir={trained}", "--split=train")
  assert "Final detections (val split, step 2" in proc.stdout
  amb = json.loads((out / "ambiguity_train.json").read_text())
  assert amb["images"] == 24 and amb["detections"]["detections"] > 0
  for s in amb["settings"].values():
    assert s["ambiguous_classes"] <= s["ambiguous"] <= s["positive"]

  proc = analyze("pr-curves", f"--workdir={trained}")
  assert "IoU 0.90: AP" in proc.stdout
  assert (out / "pr_curves_class_agnostic.png").stat().st_size > 1000
  curves = json.loads((out / "pr_curves_class_agnostic.json").read_text())
  assert sorted(curves["precision"]) == ["0.50", "0.75", "0.90"]

  val = json.loads((trained.parent.parent / "synthetic_tiny" /
                    "val.json").read_text())
  first = val["images"][0]["id"]
  analyze("centerness", f"--workdir={trained}", f"--image_ids={first}")
  assert (out / f"centerness_{first}.png").exists()


@pytest.mark.slow
def test_rpn_trains_and_is_evaluated_by_average_recall(tmp_path):
  workdir = tmp_path / "rpn"
  proc = run("train.py", workdir, tiny_args(tmp_path, steps=2, **{
      "model.inference.score_thresh": 0.0}), config="configs/synthetic_rpn_cpu.py")
  assert "COCO proposal evaluation at step 2" in proc.stdout
  metrics = json.loads((workdir / "eval" / "metrics_step2.json").read_text())
  assert set(metrics) >= {"AR100", "AR300", "AR1000", "ARs1000", "ARm1000",
                          "ARl1000"}
  # Two steps: the boxes are still near random, but more of them recall more.
  assert 1 >= metrics["AR1000"] >= metrics["AR300"] >= metrics["AR100"] >= 0
  proposals = json.loads(
      (workdir / "eval" / "detections_step2.json").read_text())
  per_image = {}
  for p in proposals:
    per_image[p["image_id"]] = per_image.get(p["image_id"], 0) + 1
  # More than a detector's 100 per image (the 128-px canvas has 341
  # locations), at most 1000.
  assert 100 < max(per_image.values()) <= 1000
  # analyze.py recall on the same proposals: the same recalls, and the
  # count per image (the RPN table's column) over every val image.
  gt = tmp_path.parent / "synthetic_tiny" / "val.json"
  out = tmp_path / "recall"
  analyze("recall", f"--workdir={workdir}", f"--out={out}",
          f"--detections={workdir / 'eval' / 'detections_step2.json'}")
  recall = json.loads((out / "recall.json").read_text())
  for k in ("AR100", "AR300", "AR1000"):
    assert recall[k] == pytest.approx(metrics[k], abs=1e-12)
  images = len(json.loads(gt.read_text())["images"])
  assert recall["num_images"] == images
  assert recall["proposals_per_image"] == pytest.approx(
      len(proposals) / images)
