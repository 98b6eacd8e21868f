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


# Every command that reads a run config checks it at start-up
# (common.setup -> fcos_jax.run.validate), before it writes anything: a bad
# --config.FIELD is one line naming the field, the value and an example.
_BAD_OVERRIDES = {
    "predict": ("model.inference.score_thresh", "nan"),
    "analyze": ("model.inference.max_detections", "-1"),
    "evaluate": ("model.inference.score_thresh", "-1"),
    "export": ("model.inference.pre_nms_topk", "0"),
}


@pytest.mark.parametrize("command", sorted(_BAD_OVERRIDES))
def test_bad_config_override_is_one_line_before_anything_is_written(
    command, tmp_path):
  field, value = _BAD_OVERRIDES[command]
  image = tmp_path / "photo.png"
  from PIL import Image
  Image.new("RGB", (32, 24)).save(image)
  out = tmp_path / "out"
  workdir = tmp_path / "no_run_yet"  # The config is refused before it is read.
  args = {"predict": [f"--workdir={workdir}", f"--images={image}"],
          "analyze": ["bpr"],
          "evaluate": [f"--workdir={workdir}"],
          "export": [f"--workdir={workdir}"]}[command]
  proc = _python(["-m", f"fcos_jax.cli.{command}", "--config=synthetic_cpu",
                  f"--out={out}", f"--config.{field}={value}"] + args)
  assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
  lines = [l for l in proc.stderr.splitlines() if l.startswith("error: ")]
  assert len(lines) == 1, proc.stderr
  assert f"config.{field}={value}" in lines[0], lines[0]
  assert f"e.g. --config.{field}=" in lines[0], lines[0]
  assert not out.exists() and not workdir.exists()
  assert sorted(p.name for p in tmp_path.iterdir()) == ["photo.png"]


def test_bad_recorded_config_is_refused_by_predict(tmp_path):
  """A hand-edited run record (flat spelling, as runs recorded before the
  model's parts existed) is checked like an override."""
  import json
  from fcos_jax.configs import synthetic_cpu
  config = synthetic_cpu.get_config().to_dict()
  inference = config["model"].pop("inference")
  config["model"].update(inference, score_thresh=-0.5)  # Flat spelling.
  workdir = tmp_path / "run"
  workdir.mkdir()
  (workdir / "config.json").write_text(json.dumps(config))
  image = tmp_path / "photo.png"
  from PIL import Image
  Image.new("RGB", (32, 24)).save(image)
  proc = _python(["predict.py", f"--workdir={workdir}", f"--images={image}",
                  f"--out={tmp_path / 'out'}"])
  assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
  [line] = [l for l in proc.stderr.splitlines() if l.startswith("error: ")]
  assert "config.model.score_thresh=-0.5" in line, line
  assert not (tmp_path / "out").exists()


def test_config_that_is_no_config_file_is_one_line(tmp_path):
  """A --config that is no Python file (it would be run as Python) or a
  .py without get_config(): one line naming it, exit 2."""
  text = tmp_path / "hostname"
  text.write_text("vm-1234\n")
  no_function = tmp_path / "settings.py"
  no_function.write_text("x = 1\n")
  for path, needle in [(text, "is no Python config file"),
                       (no_function, "defines no get_config()")]:
    proc = _python(["-m", "fcos_jax.cli.evaluate", f"--config={path}",
                    f"--workdir={tmp_path / 'run'}"])
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, \
        proc.stderr
    [line] = [l for l in proc.stderr.splitlines() if l.startswith("error: ")]
    assert str(path) in line and needle in line, line


def _recorded_run(tmp_path):
  from fcos_jax.configs import synthetic_cpu
  from fcos_jax.run import Run
  workdir = tmp_path / "run"
  workdir.mkdir()
  Run(str(workdir)).write_config(synthetic_cpu.get_config())
  return workdir


def test_overrides_without_config_change_the_runs_recorded_config(
    tmp_path, monkeypatch):
  """fcos-evaluate --workdir RUN --config.FIELD=V: the run's own config.json,
  with V type-checked and applied as ml-collections applies overrides."""
  from ml_collections import config_flags
  workdir = _recorded_run(tmp_path)
  monkeypatch.setattr(common, "_OVERRIDES_CHANGE_RECORDED", True)  # evaluate's
  argv = common._with_resolved_config(
      ["evaluate.py", f"--workdir={workdir}",
       "--config.model.inference.score_thresh=0.0"])
  assert argv[1] == (f"--config={common.packaged_configs_dir()}/recorded.py:"
                     f"{workdir}")
  values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=values)
  flags.DEFINE_string("workdir", None, "", flag_values=values)
  monkeypatch.setattr(sys, "argv", argv)  # ml-collections reads it too.
  values(argv)
  assert values.config.model.inference.score_thresh == 0.0
  assert values.config.num_train_steps == 1500  # The rest as recorded.
  # With --config given, the overrides are that file's, as before.
  given = ["evaluate.py", "--config=synthetic_cpu", f"--workdir={workdir}",
           "--config.seed=3"]
  assert common._with_resolved_config(given)[1] == (
      f"--config={common.packaged_configs_dir()}/synthetic_cpu.py")


@pytest.mark.parametrize("case", ["no_workdir", "no_record", "bad_value"])
def test_overrides_without_config_fail_in_one_line(case, tmp_path):
  workdir = (_recorded_run(tmp_path) if case == "bad_value"
             else tmp_path / "empty")
  args = {"no_workdir": ["--out=x", "--config.seed=3"],
          "no_record": [f"--workdir={workdir}", "--config.seed=3"],
          "bad_value": [f"--workdir={workdir}", "--config.seed=abc"]}[case]
  proc = _python(["-m", "fcos_jax.cli.evaluate"] + args, cwd=tmp_path)
  assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
  [line] = [l for l in proc.stderr.splitlines() if l.startswith("error: ")]
  assert {"no_workdir": "an override needs a config",
          "no_record": "has no config.json",
          "bad_value": "--config.seed=abc"}[case] in line, line
