"""fcos-predict and fcos-export against hostile inputs: a bad or extreme
image among good ones, colliding file names, an --out that holds files or
is a file, out-of-range flags."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from cli_runs import ROOT, cli_env
from fcos_jax import errors
from fcos_jax.inference import outputs
from fcos_jax.inference.detector import Detector
from fcos_jax.model.fcos import init_variables
from tiny_run import tiny_model

CFG = tiny_model(num_classes=2)
CATS = [{"id": 1, "name": "a"}, {"id": 7, "name": "b"}]


@pytest.fixture(scope="module")
def det():
  params = init_variables(CFG, jax.random.key(0))["params"]
  return Detector(CFG, params, CATS, min_size=64, max_size=128,
                  canvases=((64, 128), (128, 64)), batch_size=2)


def _png(path, h, w, seed=0):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  x = np.random.default_rng(seed).integers(0, 255, (h, w, 3), np.uint8)
  Image.fromarray(x).save(path)
  return str(path)


def test_unique_names_never_collide():
  names = outputs.unique_names(["a/photo.jpg", "b/photo.jpg", "c/photo_1.jpg",
                                "d/Photo.png", "gs://b/x/photo_1.jpg", "e/"])
  assert names == ["photo", "photo_1", "photo_1_1", "Photo_2", "photo_1_2",
                   "e"]
  assert len({n.lower() for n in names}) == len(names)


@pytest.mark.parametrize("shape", [(0, 0, 3), (3, 5000, 3), (5000, 3, 3)])
def test_detector_refuses_empty_and_extreme_arrays_by_name(det, shape):
  with pytest.raises(errors.DataError) as e:
    det([np.zeros(shape, np.uint8)])
  msg = str(e.value)
  assert msg.startswith("image 0:") and "\n" not in msg
  assert ("empty" in msg) if shape[0] == 0 else ("aspect ratio" in msg)


def test_predict_goes_past_bad_images_one_output_each(det, tmp_path):
  paths = [_png(tmp_path / "a" / "photo.png", 40, 60, 1),
           _png(tmp_path / "b" / "photo.png", 3, 5000, 2),  # Extreme strip.
           _png(tmp_path / "c" / "photo_1.png", 60, 40, 3),
           str(tmp_path / "broken.jpg"),
           _png(tmp_path / "d" / "photo.png", 50, 50, 4)]
  open(paths[3], "wb").write(b"\xff\xd8\xff not a jpeg")
  out = str(tmp_path / "out")
  outputs.prepare_out_dir(out, overwrite=False)
  seen = []
  result = outputs.predict_to_folder(det, paths, out, draw=True,
                                     heatmaps=True, on_image=seen.append)
  assert seen == [True, False, True, False, True]
  entries = json.load(open(os.path.join(out, "images.json")))
  assert [e["file_name"] for e in entries] == paths
  assert "3x5000 image" in entries[1]["error"] and paths[1] in entries[1]["error"]
  assert "broken.jpg" in entries[3]["error"]
  drawn = [e["outputs"]["draw"] for e in entries if "outputs" in e]
  assert drawn == ["draw/photo.png", "draw/photo_1_1.png", "draw/photo_2.png"]
  for e in entries:
    if "outputs" in e:
      for rel in e["outputs"].values():
        assert os.path.isfile(os.path.join(out, rel))
  assert sorted(os.listdir(os.path.join(out, "draw"))) == sorted(
      os.path.basename(p) for p in drawn)
  records = json.load(open(os.path.join(out, "detections.json")))
  assert {r["image_id"] for r in records} <= {0, 2, 4}
  assert sum(e.get("detections", 0) for e in entries) == len(records)
  assert set(result["errors"]) == {1, 3}


def test_out_folder_refused_unless_overwrite(tmp_path):
  out = tmp_path / "out"
  out.mkdir()
  (out / "mine.txt").write_text("keep me")
  with pytest.raises(errors.WorkdirError, match="--overwrite"):
    outputs.prepare_out_dir(str(out), overwrite=False)
  outputs.prepare_out_dir(str(out), overwrite=True)
  assert (out / "mine.txt").read_text() == "keep me"
  with pytest.raises(errors.WorkdirError, match="is a file"):
    outputs.prepare_out_dir(str(out / "mine.txt"), overwrite=True)
  outputs.prepare_out_dir(str(tmp_path / "new" / "deeper"), overwrite=False)
  assert (tmp_path / "new" / "deeper").is_dir()


def _cli(command, *args):
  """fcos-<command> (python -m fcos_jax.cli.<command>)."""
  proc = subprocess.run([sys.executable, "-m", f"fcos_jax.cli.{command}"] +
                        list(args),
                        cwd=ROOT, env=cli_env(), capture_output=True,
                        text=True, timeout=300)
  return proc


def _one_line_error(proc, *needles):
  assert proc.returncode != 0, proc.stdout
  assert "Traceback" not in proc.stderr, proc.stderr
  lines = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
  assert len(lines) == 1, proc.stderr
  for n in needles:
    assert n in lines[0], lines[0]
  return lines[0]


def test_predict_and_export_flags_and_out_in_one_line(tmp_path):
  """No model is read: every check here comes before the restore (the
  workdir does not even exist)."""
  image = _png(tmp_path / "im" / "x.png", 20, 30)
  workdir = str(tmp_path / "no_run")
  base = ["--workdir", workdir, "--images", image]
  _one_line_error(_cli("predict", *base, f"--out={tmp_path}/o",
                       "--batch_size=-1"), "--batch_size", "at least 1")
  _one_line_error(_cli("predict", *base, f"--out={tmp_path}/o",
                       "--score_thresh=nan"), "--score_thresh", "[0, 1]")
  full = tmp_path / "full"
  full.mkdir()
  (full / "old.json").write_text("{}")
  _one_line_error(_cli("predict", *base, f"--out={full}"),
                  str(full), "--overwrite", "old.json")
  _one_line_error(_cli("predict", *base, f"--out={full}/old.json"),
                  "is a file")
  _one_line_error(_cli("export", "--workdir", workdir, f"--out={full}"),
                  str(full), "--overwrite")
  _one_line_error(_cli("export", "--workdir", workdir,
                       f"--out={tmp_path}/e", "--platforms=gpu"),
                  "cpu, cuda, tpu", "not gpu")
  assert (full / "old.json").read_text() == "{}"


def test_weights_that_do_not_load_leave_no_out_folder(tmp_path):
  """--out is made only once the model is there."""
  image = _png(tmp_path / "im" / "x.png", 20, 30)
  bogus = tmp_path / "bogus.npz"
  bogus.write_bytes(b"not an npz")
  out = tmp_path / "out"
  _one_line_error(_cli("predict", f"--torchvision={bogus}",
                       f"--images={image}", f"--out={out}"), str(bogus))
  assert not out.exists()
