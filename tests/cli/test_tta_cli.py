"""Test-time augmentation through the real commands: evaluate.py --tta and
predict.py --tta on a tiny trained run; --tta=none is the plain evaluation,
and predict.py's TTA detections of the val images equal evaluate.py's."""

import json
import os

import pytest
from cli_runs import run, tiny_args
from test_predict_cli import _val, predict

THRESH = "0.001"  # An untrained model: low scores, but many detections.


@pytest.mark.slow
def test_evaluate_and_predict_with_tta(tmp_path):
  workdir = tmp_path / "run"
  run("train.py", workdir, tiny_args(tmp_path, steps=4, eval_at_end=False))
  # Each evaluation into its own --out (evaluate.py never overwrites).
  evaluate = lambda out, *flags: run("evaluate.py", workdir, tiny_args(
      tmp_path, steps=4) + ["--checkpoint=4", f"--out={tmp_path / out}",
                            f"--config.model.inference.score_thresh={THRESH}"]
      + list(flags))
  read = lambda out, name: json.loads((tmp_path / out / name).read_text())

  evaluate("plain")
  plain = read("plain", "detections_step4.json")
  evaluate("none", "--tta=none")
  assert read("none", "detections_step4.json") == plain

  proc = evaluate("cheap", "--tta=cheap")
  assert "test-time augmentation: 4 passes" in proc.stderr
  cheap = read("cheap", "detections_step4.json")
  metrics = read("cheap", "metrics_step4.json")
  assert metrics["num_images"] == 8 and 0 <= metrics["AP"] <= 1
  assert cheap != plain and len(cheap) >= 8 * 50

  out = tmp_path / "pred"
  val_dir, gt = _val(tmp_path)
  predict(workdir, "--checkpoint=4", f"--images={val_dir}", f"--out={out}",
          f"--score_thresh={THRESH}", "--tta=cheap", "--noexif")
  got = json.loads((out / "detections.json").read_text())
  ids = {im["file_name"]: im["id"] for im in gt["images"]}
  for r in got:
    r.pop("category_name")
    r["image_id"] = ids[os.path.basename(r.pop("file_name"))]
  key = lambda r: (r["image_id"], -r["score"], r["category_id"], r["bbox"])
  assert sorted(got, key=key) == sorted(cheap, key=key)

  proc = predict(workdir, "--checkpoint=4", f"--images={val_dir}",
                 f"--out={tmp_path / 'pred2'}", "--tta=cheap", "--heatmaps",
                 check=False)
  assert proc.returncode != 0 and "heatmaps" in proc.stderr
