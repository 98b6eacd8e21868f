"""TensorFlow for the input pipeline only: imported through here so that TF
never takes a GPU (JAX owns the accelerators)."""

import tensorflow as tf

try:
  tf.config.set_visible_devices([], "GPU")
except RuntimeError:  # TF already initialised its devices; nothing to hide now.
  pass

__all__ = ["tf"]
