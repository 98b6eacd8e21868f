"""fcos-analyze on degenerate data: a split of 0 images or 0 boxes, an
empty detections list: one line each, no "BPR 0.00% (0/0)", no AP -1, no
IndexError."""

import json
import subprocess
import sys

import pytest

from cli_runs import ROOT, cli_env
from coco_files import write_coco


def _analyze(*args):
  return subprocess.run([sys.executable, "-m", "fcos_jax.cli.analyze"] +
                        list(args), cwd=ROOT, env=cli_env(),
                        capture_output=True, text=True, timeout=600)


def _one_line(proc, *needles):
  assert proc.returncode == 1, (proc.stdout[-2000:], proc.stderr[-3000:])
  assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
  assert "0/0" not in proc.stdout and "-1" not in proc.stdout
  lines = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
  assert len(lines) == 1, proc.stderr[-3000:]
  for n in needles:
    assert n in lines[0], lines[0]


def _data_flags(js, im):
  return [f"--config={ROOT / 'configs' / 'synthetic_cpu.py'}",
          "--config.data.source=coco_format",
          f"--config.data.coco.train_json={js}",
          f"--config.data.coco.train_images={im}",
          f"--config.data.coco.val_json={js}",
          f"--config.data.coco.val_images={im}"]


@pytest.mark.parametrize("images,needle", [
    ([], "has no images"),
    ([(32, 48, []), (40, 40, [])], "no (non-crowd) box")])
def test_bpr_on_an_empty_split_is_one_line(tmp_path, images, needle):
  js, im = write_coco(str(tmp_path), images)
  _one_line(_analyze("bpr", *_data_flags(js, im), f"--out={tmp_path}/o"),
            js, needle)


@pytest.mark.slow
def test_pr_curves_and_recall_on_empty_ground_truth_or_detections(tmp_path):
  empty_js, im = write_coco(str(tmp_path / "empty"), [])
  boxless_js, _ = write_coco(str(tmp_path / "boxless"), [(32, 48, [])])
  full_js, _ = write_coco(str(tmp_path / "full"),
                          [(32, 48, [(4, 4, 10, 10, 1, 0)])])
  dets = tmp_path / "dets.json"
  dets.write_text(json.dumps([{"image_id": 1, "category_id": 1,
                               "bbox": [4, 4, 10, 10], "score": 0.9}]))
  none = tmp_path / "none.json"
  none.write_text("[]")
  base = _data_flags(full_js, im) + [f"--out={tmp_path}/o"]
  for which in ("pr-curves", "recall"):
    _one_line(_analyze(which, *base, f"--gt_json={empty_js}",
                       f"--detections={dets}"), empty_js, "no images")
    _one_line(_analyze(which, *base, f"--gt_json={boxless_js}",
                       f"--detections={dets}"), boxless_js, "no (non-crowd)")
    _one_line(_analyze(which, *base, f"--gt_json={full_js}",
                       f"--detections={none}"), str(none), "empty")
