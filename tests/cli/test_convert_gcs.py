"""fcos-convert --overwrite into a gs:// workdir (the storage emulator): the
conversion is written into a new folder beside the workdir and swapped in
only after it succeeded; a failed conversion, or a failed swap, leaves the
existing run's files as they were, and nothing else behind.

A gs:// "folder" exists only by the objects under it and a move is a copy
per object: the swap moves the old entries aside into a folder that holds
a note (README.txt), and takes them back if a move fails.

The conversion itself is replaced by a small stand-in where only the swap
is under test (a real one copies ResNet-50's 128 MB through the emulator
twice: minutes); the failing conversions are the real code.
"""

import os
import subprocess
import sys

import pytest
from gcs_emulator import BUCKET, gcs  # noqa: F401  (the fixture)

from fcos_jax import errors, storage
from fcos_jax.cli import convert
from fcos_jax.configs import torchvision_r50
from fcos_jax.run import lock as lock_lib

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))


def _fs():
  return lock_lib._fsspec(f"gs://{BUCKET}/x")


def _objects(name):
  """{object: bytes} of the workdir `name` and of every sibling whose name
  starts with it (staging and set-aside folders)."""
  fs = _fs()
  fs.invalidate_cache()
  return {p: fs.cat_file(p) for p in fs.find(f"{BUCKET}")
          if p.startswith(f"{BUCKET}/{name}")}


def _old_run(name):
  """A run with checkpoints and the user's own file, on gs://."""
  workdir = f"gs://{BUCKET}/{name}"
  for rel, data in [("checkpoints/7/state/data", b"old weights"),
                    ("checkpoints/7/_CHECKPOINT_METADATA", b"{}"),
                    ("config.json", b'{"old": 1}'),
                    ("categories.json", b'{"categories": []}'),
                    ("eval/metrics_step7.json", b'{"AP": 0.5}'),
                    ("notes.txt", b"the user's own file")]:
    storage.write_bytes_atomic(f"{workdir}/{rel}", data)
  return workdir


def _small_conversion(state_dict, run, config, source):
  """Stands in for the conversion: a new run of a few small files."""
  del state_dict, config, source
  storage.write_text_atomic(run.path("config.json"), '{"new": 1}')
  storage.write_text_atomic(run.path("categories.json"), '{"categories": [1]}')
  storage.write_bytes_atomic(run.path("checkpoints/0/state/data"), b"new")
  return "converted"


def test_bogus_weights_file_leaves_the_gcs_run(gcs, tmp_path):  # noqa: F811
  workdir = _old_run("bogus")
  before = _objects("bogus")
  bogus = tmp_path / "weights.npz"
  bogus.write_bytes(b"this is no npz archive" * 10)
  with pytest.raises(errors.DataError) as e:
    convert.convert_to_workdir(str(bogus), workdir,
                               torchvision_r50.get_config(), overwrite=True)
  assert str(bogus) in str(e.value) and "\n" not in str(e.value)
  assert _objects("bogus") == before


def test_failed_conversion_leaves_the_gcs_run(gcs):  # noqa: F811
  """The real conversion of a state dict that lacks a tensor fails; so
  does one that stops after writing part of the new run."""
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  from test_convert_cli import random_torchvision_state_dict
  workdir = _old_run("failed")
  before = _objects("failed")
  broken = random_torchvision_state_dict()
  broken.pop("head.classification_head.cls_logits.bias")
  with pytest.raises(Exception) as e:
    convert.convert_to_workdir(broken, workdir, torchvision_r50.get_config(),
                               overwrite=True)
  assert not isinstance(e.value, errors.WorkdirLockedError)
  assert _objects("failed") == before

  def half_written(state_dict, run, config, source):
    storage.write_text_atomic(run.path("config.json"), '{"new": 1}')
    raise OSError("the conversion stopped half way")

  original = convert._write_converted
  convert._write_converted = half_written
  try:
    with pytest.raises(OSError, match="half way"):
      convert.convert_to_workdir({}, workdir, torchvision_r50.get_config(),
                                 overwrite=True)
  finally:
    convert._write_converted = original
  assert _objects("failed") == before


@pytest.mark.parametrize("fails", ["moving_the_new_run_in",
                                   "half_way_moving_the_old_run_aside"])
def test_failed_swap_puts_the_gcs_run_back(gcs, monkeypatch, fails):  # noqa: F811
  name = f"swap_fails_{fails}"
  workdir = _old_run(name)
  before = _objects(name)
  monkeypatch.setattr(convert, "_write_converted", _small_conversion)
  gpath = type(storage.path(workdir))
  rename = gpath.rename

  def failing_rename(self, target):
    src, dst = str(self), str(target)
    if fails == "moving_the_new_run_in" and ".converting-" in src and (
        ".old" not in src and dst.endswith("/checkpoints")):
      raise OSError("storage went away during the swap")
    if fails == "half_way_moving_the_old_run_aside" and src == (
        f"{workdir}/checkpoints"):
      # A gs:// folder moves object by object: one gets across, then the
      # storage fails.
      _fs().mv(f"{workdir}/checkpoints/7/state/data",
               f"{dst}/7/state/data")
      raise OSError("storage went away during the swap")
    return rename(self, target)

  monkeypatch.setattr(gpath, "rename", failing_rename)
  with pytest.raises(OSError, match="during the swap"):
    convert.convert_to_workdir({}, workdir, torchvision_r50.get_config(),
                               overwrite=True)
  assert _objects(name) == before


def test_overwrite_swaps_the_new_run_in(gcs, monkeypatch):  # noqa: F811
  workdir = _old_run("swapped")
  monkeypatch.setattr(convert, "_write_converted", _small_conversion)
  assert convert.convert_to_workdir(
      {}, workdir, torchvision_r50.get_config(), overwrite=True) == "converted"
  prefix = f"{BUCKET}/swapped/"
  assert _objects("swapped") == {
      prefix + "config.json": b'{"new": 1}',
      prefix + "categories.json": b'{"categories": [1]}',
      prefix + "checkpoints/0/state/data": b"new",
      prefix + "notes.txt": b"the user's own file"}  # No eval/ of the old
  # checkpoints, no lock, no staging or set-aside folder.
  # Into a new gs:// workdir (nothing to move aside) too.
  assert convert.convert_to_workdir(
      {}, f"gs://{BUCKET}/fresh", torchvision_r50.get_config()) == "converted"
  assert sorted(_objects("fresh")) == [
      f"{BUCKET}/fresh/{n}" for n in ("categories.json",
                                      "checkpoints/0/state/data",
                                      "config.json")]


def test_cli_bogus_file_over_a_gcs_run_is_one_line(gcs, tmp_path):  # noqa: F811
  workdir = _old_run("cli_bogus")
  before = _objects("cli_bogus")
  bogus = tmp_path / "fcos.pth"
  bogus.write_bytes(b"\x00" * 100)
  proc = subprocess.run(
      [sys.executable, "-m", "fcos_jax.cli.convert", f"--torchvision={bogus}",
       f"--workdir={workdir}", "--overwrite", "--config.compilation_cache_dir="],
      cwd=ROOT, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", **gcs),
      capture_output=True, text=True, timeout=300)
  assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
  [line] = [l for l in proc.stderr.splitlines() if l.startswith("error: ")]
  assert str(bogus) in line
  assert _objects("cli_bogus") == before
