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
  absl_logger = logging.getLogger("absl")
  filters, hook = list(absl_logger.filters), sys.unraisablehook
  levels = {n: logging.getLogger(n).level for n in cli._QUIET_LOGGERS}
  cli.configure_logging()
  cli.configure_logging()  # Twice (train.py then a library call): one filter.
  yield absl_logger
  absl_logger.filters[:] = filters
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
