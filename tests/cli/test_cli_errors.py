"""The commands' one error policy (fcos_jax.cli.common.run): a UserError
is one line `error: ...` (exit 1), a bad flag or --config name one line
(exit 2), any other exception a programming error with its traceback;
--version; --config by a packaged config's name."""

import os
import subprocess
import sys

import pytest
from absl import flags

from cli_runs import ROOT
from fcos_jax import __version__
from fcos_jax.cli import common

COMMANDS = ("train", "evaluate", "predict", "analyze", "convert", "export")


def _python(code_or_args, cwd=ROOT):
  args = (["-c", code_or_args] if isinstance(code_or_args, str)
          else list(code_or_args))
  return subprocess.run([sys.executable] + args, cwd=cwd,
                        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2",
                                 PYTHONPATH=str(ROOT)),
                        capture_output=True, text=True, timeout=300)


# fcos-evaluate --workdir W, with the run's recorded config replaced by a
# function that raises: deep enough that the command's own code runs first.
_PATCHED_EVALUATE = """
import sys
from fcos_jax import errors
from fcos_jax.cli import evaluate
from fcos_jax.run import Run

def recorded_config(self):
  raise {error}

Run.recorded_config = recorded_config
evaluate.run()
"""


def _evaluate_raising(error, tmp_path):
  code = _PATCHED_EVALUATE.format(error=error)
  return _python(["-c", code, "--workdir", str(tmp_path)])


def test_programming_error_keeps_its_traceback(tmp_path):
  for error in ('ValueError("a programming error")',
                'TypeError("a programming error")'):
    proc = _evaluate_raising(error, tmp_path)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback (most recent call last)" in proc.stderr, proc.stderr
    assert "in recorded_config" in proc.stderr
    assert error.split("(")[0] + ": a programming error" in proc.stderr
    assert "error: a programming error" not in proc.stderr


def test_user_error_is_one_line(tmp_path):
  proc = _evaluate_raising(
      'errors.ConfigError("config.model.depth=7: must be one of 18, 50.")',
      tmp_path)
  assert proc.returncode == 1
  assert "Traceback" not in proc.stderr, proc.stderr
  lines = [l for l in proc.stderr.splitlines() if l.startswith("error: ")]
  assert lines == ["error: config.model.depth=7: must be one of 18, 50."]


def test_missing_workdir_is_one_line(tmp_path):
  proc = _python(["evaluate.py", f"--workdir={tmp_path / 'nothing'}"])
  assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
  assert proc.stderr.strip().splitlines()[-1].startswith("error: ")


@pytest.mark.parametrize("command", COMMANDS)
def test_version(command):
  proc = _python(["-m", f"fcos_jax.cli.{command}", "--version"])
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.split()[-1] == __version__


def test_config_by_name():
  root = common.packaged_configs_dir()
  want = os.path.join(root, "synthetic_cpu.py")
  assert common.resolve_config("synthetic_cpu") == want
  assert common.resolve_config("synthetic_cpu.py") == want
  assert common.resolve_config("zoo:FCOS_R_50_FPN_1x") == (
      os.path.join(root, "zoo.py") + ":FCOS_R_50_FPN_1x")
  here = str(ROOT / "configs" / "synthetic_cpu.py")
  assert common.resolve_config(here) == here  # A file stays as given.
  assert common.resolve_config(here + ":x") == here + ":x"
  with pytest.raises(flags.Error, match="packaged: .*synthetic_cpu"):
    common.resolve_config("synthetic_cpux")


def test_unknown_config_name_is_one_line(tmp_path):
  proc = _python(["-m", "fcos_jax.cli.train", "--config", "synthetic_cpux",
                  f"--workdir={tmp_path}"], cwd=tmp_path)
  assert proc.returncode == 2 and "Traceback" not in proc.stderr
  [line] = [l for l in proc.stderr.splitlines() if l.startswith("error: ")]
  assert "--config synthetic_cpux" in line and "synthetic_cpu," in line
