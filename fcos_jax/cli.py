"""Process set-up shared by the command-line entry points."""

from __future__ import annotations

import os

from absl import logging


def setup(config) -> None:
  """Logging, TensorFlow kept off the GPUs, multi-process start, XLA cache."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  logging.set_verbosity(logging.INFO)
  import tensorflow as tf
  tf.config.set_visible_devices([], "GPU")  # TF only feeds data.
  from fcos_jax import runtime
  runtime.initialize_distributed()
  runtime.enable_compilation_cache(config.compilation_cache_dir)
