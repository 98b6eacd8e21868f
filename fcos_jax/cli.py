"""Process set-up shared by the command-line entry points."""

from __future__ import annotations

import logging as py_logging
import os

from absl import logging


class _QuietLibraries(py_logging.Filter):
  """Drops the INFO chatter of orbax and jax (their warnings still show)."""

  _NOISY = (os.sep + "orbax" + os.sep, os.sep + "jax" + os.sep)

  def filter(self, record):
    if record.levelno >= py_logging.WARNING:
      return True
    return not any(part in record.pathname for part in self._NOISY)


def setup(config) -> None:
  """Logging, TensorFlow kept off the GPUs, multi-process start, XLA cache."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  logging.set_verbosity(logging.INFO)
  logging.get_absl_handler().addFilter(_QuietLibraries())
  import tensorflow as tf
  tf.config.set_visible_devices([], "GPU")  # TF only feeds data.
  from fcos_jax import runtime
  runtime.initialize_distributed()
  runtime.enable_compilation_cache(config.compilation_cache_dir)
