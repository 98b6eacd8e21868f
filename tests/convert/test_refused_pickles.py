"""Weights files that ask to run code, or are damaged: one line naming the
file and why (no torch traceback, no advice to pass weights_only=False),
and nothing of them runs."""

import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

from cli_runs import ROOT, cli_env
from fcos_jax import errors
from fcos_jax.convert import imagenet, official, safe_load
from fcos_jax.convert import torchvision as tv

torch = pytest.importorskip("torch")


class _RunsCode:
  def __init__(self, marker):
    self.marker = str(marker)

  def __reduce__(self):
    return (os.system, (f"touch {self.marker}",))


def _evil_pth(tmp_path):
  marker = tmp_path / "ran"
  path = tmp_path / "evil.pth"
  torch.save({"conv1.weight": torch.zeros(2), "x": _RunsCode(marker)},
             str(path))
  return str(path), marker


def _evil_pkl(tmp_path):
  marker = tmp_path / "ran_pkl"
  path = tmp_path / "evil.pkl"
  path.write_bytes(pickle.dumps(
      {"blobs": {"conv1_w": np.zeros(3), "x": _RunsCode(marker)}}, protocol=2))
  return str(path), marker


def _check_refusal(e, path, what="posix.system"):
  msg = str(e)
  assert msg.startswith(f"{path}: refused to load {what}")
  assert "\n" not in msg and "weights_only" not in msg
  assert isinstance(e, errors.UserError)


def test_pth_with_a_callable_is_refused_in_one_line(tmp_path):
  path, marker = _evil_pth(tmp_path)
  for load in (tv.load_state_dict, official.load_official_state_dict):
    with pytest.raises(safe_load.RefusedPickle) as e:
      load(path)
    _check_refusal(e.value, path)
  assert not marker.exists()


def test_detectron_pickle_with_a_callable_is_refused_in_one_line(tmp_path):
  path, marker = _evil_pkl(tmp_path)
  with pytest.raises(safe_load.RefusedPickle) as e:
    imagenet.load_detectron_pickle(path)
  _check_refusal(e.value, path)
  assert isinstance(e.value, pickle.UnpicklingError)  # Callers' old catch.
  assert not marker.exists()


def test_npz_with_pickled_objects_is_refused(tmp_path):
  path = str(tmp_path / "objects.npz")
  np.savez(path, a=np.zeros(2), b=np.asarray([{"x": 1}], dtype=object))
  with pytest.raises(safe_load.RefusedPickle, match="objects.npz: refused"):
    tv.load_state_dict(path)


@pytest.mark.parametrize("kind", ["pth", "pkl"])
def test_damaged_weights_file_is_one_line(tmp_path, kind):
  if kind == "pth":
    good = tmp_path / "good.pth"
    torch.save({"w": torch.zeros(3)}, str(good))
    path = tmp_path / "cut.pth"
    path.write_bytes(good.read_bytes()[:120])
    load = tv.load_state_dict
  else:
    path = tmp_path / "cut.pkl"
    path.write_bytes(pickle.dumps({"blobs": {"a": np.zeros(9)}})[:30])
    load = imagenet.load_detectron_pickle
  with pytest.raises(errors.DataError) as e:
    load(str(path))
  assert str(e.value).startswith(f"{path}: not a readable")
  assert "\n" not in str(e.value)


def _cli_one_line(args, path, marker):
  proc = subprocess.run([sys.executable, "-m"] + args, cwd=ROOT,
                        env=cli_env(), capture_output=True, text=True,
                        timeout=600)
  assert proc.returncode == 1, proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
  assert "weights_only" not in proc.stderr
  lines = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
  assert len(lines) == 1 and f"{path}: refused to load" in lines[0], \
      proc.stderr[-3000:]
  assert not marker.exists()


def test_convert_and_predict_refuse_a_pth_that_runs_code(tmp_path):
  path, marker = _evil_pth(tmp_path)
  _cli_one_line(["fcos_jax.cli.convert", f"--torchvision={path}",
                 f"--workdir={tmp_path / 'run'}"], path, marker)
  image = tmp_path / "x.png"
  from PIL import Image
  Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(image)
  _cli_one_line(["fcos_jax.cli.predict", f"--torchvision={path}",
                 f"--images={image}", f"--out={tmp_path / 'out'}"], path,
                marker)


@pytest.mark.slow
def test_train_refuses_a_detectron_pickle_that_runs_code(tmp_path):
  path, marker = _evil_pkl(tmp_path)
  from cli_runs import tiny_args
  args = tiny_args(tmp_path, steps=2) + [
      f"--config.init_backbone={path}",
      "--config.init_backbone_format=detectron_pkl",
      # The backbone fields a Detectron pickle needs (checked first).
      "--config.model.bn_eps=0.0", "--config.model.backbone_norm=frozen_bn",
      "--config.model.input_bgr=True", "--config.model.input_range=255.0",
      "--config.model.pixel_mean=(102.9801,115.9465,122.7717)",
      "--config.model.pixel_std=(1.0,1.0,1.0)",
      "--config.model.stride_in_1x1=True"]
  _cli_one_line(["fcos_jax.cli.train", "--config",
                 str(ROOT / "configs" / "synthetic_cpu.py"),
                 f"--workdir={tmp_path / 'run'}"] + args, path, marker)


def test_bytes_that_are_no_pickle_are_called_damaged_not_dangerous(tmp_path):
  path = tmp_path / "noise.pth"
  data = bytes([0xB6]) + np.random.default_rng(0).bytes(4000)  # 0xB6: no opcode.
  path.write_bytes(data)
  with pytest.raises(errors.DataError) as e:
    safe_load.torch_load(str(path), data)
  assert not isinstance(e.value, safe_load.RefusedPickle)
  assert "no pickle opcode" in str(e.value) and str(path) in str(e.value)


def test_protocol_0_pickle_that_builds_an_object_is_still_refused(tmp_path):
  """INST ('i', opcode 105) builds an object: refused as a pickle asking
  for too much, and it does not run."""
  marker = tmp_path / "ran_inst"
  data = f"(S'touch {marker}'\nios\nsystem\n.".encode()
  path = tmp_path / "inst.pth"
  path.write_bytes(data)
  with pytest.raises(safe_load.RefusedPickle):
    safe_load.torch_load(str(path), data)
  assert not marker.exists()
