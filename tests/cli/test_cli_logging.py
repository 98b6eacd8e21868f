"""fcos_jax.cli.common.configure_logging: libraries quiet by logger name, orbax (which logs
through absl's logger) by its installed folder, our lines kept wherever the
checkout lies."""

import logging
import os
import sys

import orbax.checkpoint
import pytest

from fcos_jax.cli import common as cli


@pytest.fixture
def configured():
  absl_logger, root = logging.getLogger("absl"), logging.getLogger()
  filters, hook = list(absl_logger.filters), sys.unraisablehook
  root_filters = list(root.filters)
  levels = {n: logging.getLogger(n).level
            for n in cli._QUIET_LOGGERS + cli._SILENT_LOGGERS}
  cli.configure_logging()
  cli.configure_logging()  # Twice (train.py then a library call): one filter.
  yield absl_logger
  absl_logger.filters[:] = filters
  root.filters[:] = root_filters
  sys.unraisablehook = hook
  for name, level in levels.items():
    logging.getLogger(name).setLevel(level)


def _record(path, level, exc=False):
  exc_info = None
  if exc:
    try:
      raise OSError("disk full")
    except OSError:
      exc_info = sys.exc_info()
  return logging.LogRecord("absl", level, path, 1, "message", (), exc_info)


def test_levels_and_filters(configured):
  assert sum(isinstance(f, cli._QuietPackages)
             for f in configured.filters) == 1
  for name in ("jax", "orbax", "etils"):
    assert logging.getLogger(name).getEffectiveLevel() == logging.WARNING
  assert not logging.getLogger("jax._src.compiler").isEnabledFor(logging.INFO)

  orbax_file = os.path.join(os.path.dirname(orbax.checkpoint.__file__),
                            "checkpoint_manager.py")
  assert not configured.filter(_record(orbax_file, logging.INFO))
  error = _record(orbax_file, logging.ERROR, exc=True)
  assert configured.filter(error) and error.exc_info is None
  # Our own INFO lines, from a checkout under a folder named "jax", stay.
  ours = "/home/user/jax/fcos_jax/fcos_jax/train/loop.py"
  assert configured.filter(_record(ours, logging.INFO))
  kept = _record(ours, logging.ERROR, exc=True)
  assert configured.filter(kept) and kept.exc_info is not None


def test_known_library_noise_is_dropped(configured):
  orbax_file = os.path.join(os.path.dirname(orbax.checkpoint.__file__),
                            "checkpoint_manager.py")
  for msg in ("CheckpointManagerOptions.read_only=True, setting "
              "save_interval_steps=0.", "Given directory is read only=%s"):
    record = _record(orbax_file, logging.WARNING)
    record.msg = msg
    assert not configured.filter(record)
  other = _record(orbax_file, logging.WARNING)  # Other warnings show.
  assert configured.filter(other)
  # jax2onnx logs INFO through the root logger: dropped by its folder.
  root = logging.getLogger()
  assert sum(isinstance(f, cli._QuietPackages) for f in root.filters) == 1
  import importlib.util
  j2o = importlib.util.find_spec("jax2onnx").submodule_search_locations[0]
  assert not root.filters[-1].filter(
      _record(os.path.join(j2o, "user_interface.py"), logging.INFO))
  for name in ("faster_coco_eval", "jax2onnx"):
    assert not logging.getLogger(name + ".x").isEnabledFor(logging.INFO)
  assert not logging.getLogger("onnx_ir.serde").isEnabledFor(logging.WARNING)


def test_verbosity_is_read_before_parsing():
  v = cli.argv_verbosity
  assert v(["x"]) == 0 and v(["x", "--verbosity=1"]) == 1
  assert v(["x", "-v", "2"]) == 2 and v(["x", "--v=1"]) == 1
  assert v(["x", "--", "--verbosity=1"]) == 0
  assert v(["x", "--verbosity=bad"]) == 0  # absl's parser refuses it.
  env = {}
  import unittest.mock
  with unittest.mock.patch.dict(os.environ, env, clear=True):
    cli.quiet_native_logs(["x", "--verbosity=1"])
    assert "TF_ENABLE_ONEDNN_OPTS" not in os.environ
    cli.quiet_native_logs(["x"])
    assert os.environ["TF_ENABLE_ONEDNN_OPTS"] == "0"
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "2"
    os.environ["TF_ENABLE_ONEDNN_OPTS"] = "1"  # The user's choice stays.
    cli.quiet_native_logs(["x"])
    assert os.environ["TF_ENABLE_ONEDNN_OPTS"] == "1"


def test_onnx_runtime_warnings_off_unless_verbose():
  from fcos_jax.export import onnx_export
  ort_logger = logging.getLogger("onnxruntime")
  level = ort_logger.level
  try:
    ort_logger.setLevel(logging.WARNING)
    assert onnx_export.session_log_severity() == 3  # Errors only.
    ort_logger.setLevel(logging.DEBUG)
    assert onnx_export.session_log_severity() == 2  # ONNX Runtime's default.
  finally:
    ort_logger.setLevel(level)
