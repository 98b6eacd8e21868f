"""Commands that need an optional package (a pip extra of pyproject.toml)
say so in one line naming the extra, before writing anything; a missing
weights file is named as missing first. The packages are hidden from a
subprocess (`sys.modules[name] = None`, as if not installed), not
uninstalled."""

import os
import pathlib
import subprocess
import sys

import pytest

from fcos_jax import errors

ROOT = pathlib.Path(__file__).resolve().parents[2]


def run_without(modules, module, args, cwd):
  """`python -m module args` with `modules` unimportable."""
  code = ("import runpy, sys\n"
          f"for name in {list(modules)!r}:\n"
          "  sys.modules[name] = None\n"
          f"sys.argv = [{module!r}] + {list(args)!r}\n"
          f"runpy.run_module({module!r}, run_name='__main__')\n")
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2",
             PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
  return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=300)


def error_lines(proc):
  return [l for l in proc.stderr.splitlines() if l.startswith("error:")]


def test_require_extra_names_the_missing_module_and_the_extra(monkeypatch):
  monkeypatch.setitem(sys.modules, "onnx", None)
  with pytest.raises(errors.MissingExtraError) as e:
    errors.require_extra("export", "The ONNX export", "numpy", "onnx")
  assert str(e.value) == (
      'The ONNX export needs onnx, not installed: pip install '
      '"fcos-jax[export]" (in a clone: pip install ".[export]").')
  assert isinstance(e.value, ImportError)  # Callers catching it still do.
  errors.require_extra("export", "x", "numpy")  # Installed: nothing.


def test_export_all_checks_onnx_before_the_first_artifact(tmp_path):
  # In its own process: the CLI modules define absl flags of the same names
  # (--config, --workdir), so two of them cannot be imported into one.
  out = tmp_path / "out"
  code = ("import sys\n"
          "sys.modules['onnxruntime'] = None\n"
          "from fcos_jax import errors\n"
          "from fcos_jax.cli import export\n"
          "try:\n"
          "  # No detector is needed: nothing is read or written before the\n"
          "  # check.\n"
          "  export.export_all(None, sys.argv[1], formats=['stablehlo', 'onnx'],\n"
          "                    dtypes=['float32'], platforms=['cpu'], batch=1,\n"
          "                    min_size=64, max_size=64)\n"
          "except errors.MissingExtraError as e:\n"
          "  print('refused:', e)\n")
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2",
             PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
  proc = subprocess.run([sys.executable, "-c", code, str(out)], cwd=tmp_path,
                        env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "refused:" in proc.stdout and "onnxruntime" in proc.stdout
  assert "[export]" in proc.stdout
  assert not out.exists()


@pytest.mark.slow
def test_convert_and_export_without_their_extras(tmp_path):
  workdir = tmp_path / "run"
  # A missing .pth is reported as missing, whether torch is there or not.
  proc = run_without(["torch"], "fcos_jax.cli.convert", [
      "--official", "nothere.pth", "--config",
      "zoo:FCOS_imprv_R_50_FPN_1x", "--workdir", str(workdir)],
      cwd=tmp_path)
  assert proc.returncode == 1, proc.stderr[-3000:]
  assert error_lines(proc) == ["error: --official=nothere.pth: no such file."]
  assert not workdir.exists()
  # An existing .pth without torch: the `convert` extra, nothing written.
  for source, name in [("official", "FCOS_imprv_R_50_FPN_1x.pth"),
                       ("torchvision", "fcos_resnet50_fpn_coco-99b0c9b7.pth")]:
    (tmp_path / name).write_bytes(b"PK\x03\x04 not read")
    args = [f"--{source}", name, "--workdir", str(workdir)]
    if source == "official":
      args += ["--config", "zoo:FCOS_imprv_R_50_FPN_1x"]
    proc = run_without(["torch"], "fcos_jax.cli.convert", args,
                       cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert error_lines(proc) == [
        f"error: Reading {name} (a PyTorch file; an .npz of the same state "
        "dict needs no torch) needs torch, not installed: pip install "
        '"fcos-jax[convert]" (in a clone: pip install ".[convert]").']
    assert "Traceback" not in proc.stderr
    assert not workdir.exists()
  # fcos-export without onnx: one line before --out is made.
  out = tmp_path / "export"
  proc = run_without(["onnx"], "fcos_jax.cli.export",
                     ["--workdir", str(workdir), "--out", str(out)],
                     cwd=tmp_path)
  assert proc.returncode == 1, proc.stderr[-3000:]
  [line] = error_lines(proc)
  assert line.startswith("error: The ONNX export (--formats=onnx) needs onnx")
  assert line.endswith('pip install "fcos-jax[export]" (in a clone: pip '
                       'install ".[export]").')
  assert not out.exists()
