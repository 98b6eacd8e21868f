"""predict.py end to end: one tiny trained run; predict.py's detections of
the val images equal evaluate.py's; bad files are skipped and counted (exit
1), an empty input is a clear error."""

import json
import os
import pathlib
import shutil

import pytest
from test_train_cli import run, tiny_args

ROOT = pathlib.Path(__file__).resolve().parents[2]
THRESH = "0.001"  # An untrained model: low scores, but many detections.


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("predict_run")
  workdir = tmp / "run"
  run("train.py", workdir, tiny_args(tmp, steps=4, eval_at_end=False))
  return tmp, workdir


def predict(workdir, *args, check=True):
  """predict.py with the run's recorded config (no --config)."""
  import subprocess
  import sys
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1",
             TF_CPP_MIN_LOG_LEVEL="2")
  cmd = [sys.executable, str(ROOT / "predict.py"), "--workdir",
         str(workdir)] + list(args)
  proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=600)
  if check and proc.returncode != 0:
    raise AssertionError(f"predict.py failed ({proc.returncode}):\n"
                         f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
  return proc


def _val(tmp):
  d = tmp.parent / "synthetic_tiny"  # Where tiny_args puts it.
  return d / "val", json.loads((d / "val.json").read_text())


@pytest.mark.slow
def test_predict_equals_evaluate_on_the_val_images(trained):
  tmp, workdir = trained
  run("evaluate.py", workdir, tiny_args(tmp, steps=4) + [
      "--checkpoint=4", f"--config.model.inference.score_thresh={THRESH}",
      f"--out={tmp / 'evaluated'}"])
  want = json.loads((tmp / "evaluated" / "detections_step4.json").read_text())

  out = tmp / "pred"
  val_dir, gt = _val(tmp)
  proc = predict(workdir, "--checkpoint=4", f"--images={val_dir}",
                 f"--out={out}", f"--score_thresh={THRESH}", "--draw",
                 "--heatmaps")
  assert "images/s" in proc.stderr and "0 skipped" in proc.stdout
  got = json.loads((out / "detections.json").read_text())
  ids = {im["file_name"]: im["id"] for im in gt["images"]}
  names = {c["id"]: c["name"] for c in gt["categories"]}
  for r in got:
    assert r.pop("category_name") == names[r["category_id"]]
    r["image_id"] = ids[os.path.basename(r.pop("file_name"))]
  key = lambda r: (r["image_id"], -r["score"], r["category_id"], r["bbox"])
  assert len(want) >= 8 * 50
  assert sorted(got, key=key) == sorted(want, key=key)
  pictures = sorted(p.name for p in (out / "draw").iterdir())
  assert pictures == sorted(f"{os.path.splitext(f)[0]}.png" for f in ids)
  assert len(list((out / "heatmaps").iterdir())) == len(ids)


@pytest.mark.slow
def test_bad_files_are_skipped_and_counted_and_empty_input_refused(trained):
  tmp, workdir = trained
  val_dir, gt = _val(tmp)
  mixed = tmp / "mixed"
  mixed.mkdir()
  first = gt["images"][0]["file_name"]
  shutil.copy(val_dir / first, mixed / first)
  (mixed / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
  (mixed / "notes.png").write_text("hello")
  out = tmp / "pred_mixed"
  proc = predict(workdir, f"--images={mixed}/*", f"--out={out}", check=False)
  assert proc.returncode == 1
  assert "2 of 3 file(s) could not be used" in proc.stderr
  assert "broken.jpg" in proc.stderr and "notes.png" in proc.stderr
  records = json.loads((out / "images.json").read_text())
  assert [("error" in r) for r in records] == [False, True, True]
  got = json.loads((out / "detections.json").read_text())
  assert {r["file_name"] for r in got} <= {str(mixed / first)}

  empty = tmp / "empty"
  empty.mkdir()
  proc = predict(workdir, f"--images={empty}", f"--out={tmp / 'p2'}",
                 check=False)
  assert proc.returncode == 1
  assert "no image files" in proc.stderr and "Traceback" not in proc.stderr
  proc = predict(workdir, f"--images={tmp}/nothing_*.jpg",
                 f"--out={tmp / 'p2'}", check=False)
  assert proc.returncode == 1 and "matches no file" in proc.stderr


@pytest.mark.slow
def test_console_is_quiet(trained):
  """evaluate.py as a user runs it (no TF variables set): no TensorFlow
  banner, no orbax read-only warnings, the COCO table once (faster-coco-eval
  logs its own copy), no line twice."""
  import re
  import subprocess
  from cli_runs import command
  tmp, workdir = trained
  env = {k: v for k, v in os.environ.items()
         if k not in ("TF_CPP_MIN_LOG_LEVEL", "TF_ENABLE_ONEDNN_OPTS")}
  env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
  env["MPLCONFIGDIR"] = str(tmp / "fresh_matplotlib")  # As on a new machine.
  proc = subprocess.run(
      command("evaluate.py", workdir, tiny_args(tmp, steps=4) + [
          "--checkpoint=4", "--config.eval_backend=faster_coco_eval",
          f"--config.model.inference.score_thresh={THRESH}",
          f"--out={tmp / 'quiet'}"]),
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  console = proc.stdout + proc.stderr
  assert "oneDNN" not in console and "absl::InitializeLog" not in console
  assert "fontManager" not in console  # matplotlib's first-run INFO line.
  assert not re.search(r"read[ _]only", console, re.IGNORECASE), console
  lines = [re.sub(r"^[IWEF]\d{4} [\d:.]+ +\d+ [\w.]+:\d+\] ", "", line)
           for line in console.splitlines() if line.strip()]
  assert sum("(AP) @[ IoU=0.50:0.95 | area=   all" in l for l in lines) == 1
  assert len(lines) == len(set(lines)), console
