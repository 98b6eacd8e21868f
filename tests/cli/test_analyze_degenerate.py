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


@pytest.mark.slow
def test_pr_curves_and_recall_on_detections_that_do_not_fit(tmp_path):
  """A missing file, a record that is no COCO result and detections of
  another split: one line each (pycocotools would stop with a traceback)."""
  full_js, im = write_coco(str(tmp_path / "full"),
                           [(32, 48, [(4, 4, 10, 10, 1, 0)])])
  gt_ids = [i["id"] for i in json.loads(open(full_js).read())["images"]]
  bad_box = tmp_path / "bad_box.json"
  bad_box.write_text(json.dumps([{"image_id": gt_ids[0], "category_id": 1,
                                  "bbox": [4, 4, "x", 10], "score": 0.9}]))
  other = tmp_path / "other_split.json"
  other.write_text(json.dumps([{"image_id": 987654, "category_id": 1,
                                "bbox": [4, 4, 10, 10], "score": 0.9}]))
  base = _data_flags(full_js, im) + [f"--out={tmp_path}/o",
                                     f"--gt_json={full_js}"]
  for which in ("pr-curves", "recall"):
    _one_line(_analyze(which, *base, f"--detections={tmp_path}/none.json"),
              "--detections=", "no such file")
    _one_line(_analyze(which, *base, f"--detections={bad_box}"),
              str(bad_box), "record 0")
    _one_line(_analyze(which, *base, f"--detections={other}"),
              str(other), "987654", "not in the ground truth")
  assert not (tmp_path / "o").exists()


def test_image_ids_that_are_no_numbers_are_one_line(tmp_path):
  proc = _analyze("centerness", f"--workdir={tmp_path}", "--image_ids=abc")
  assert proc.returncode == 2 and "Traceback" not in proc.stderr
  [line] = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
  assert "--image_ids" in line and "whole numbers" in line
