"""A TF SavedModel of the serving function (jax2tf, native serialization:
the StableHLO program runs in TF's XlaCallModule op).

The parameters are tf.Variables of the SavedModel (its variables/ folder),
the signature `serving_default` takes the three inputs by name (a fixed
batch size) and returns the four outputs:

    m = tf.saved_model.load(path)
    out = m.signatures["serving_default"](images=..., image_hw=..., orig_hw=...)
"""

from __future__ import annotations

import contextlib
from typing import Sequence

import numpy as np
from jax.experimental import jax2tf

from fcos_jax.data.tf_setup import tf
from fcos_jax.export import serving
from fcos_jax.inference import step
from fcos_jax.model.config import ModelConfig


@contextlib.contextmanager
def _stablehlo_for_tf():
  """Serialise StableHLO for the 12-week compatibility window instead of
  jax's 4 weeks: jax 0.10 writes StableHLO 1.15 by default, TF 2.21's
  XlaCallModule reads up to 1.13.7 (the 12-week version)."""
  from jax._src.export import _export  # pylint: disable=import-outside-toplevel
  hlo = _export.hlo
  original = hlo.get_version_from_compatibility_requirement
  week_12 = original(hlo.StablehloCompatibilityRequirement.WEEK_12)

  class _Patched:
    def __getattr__(self, name):
      if name == "get_version_from_compatibility_requirement":
        return lambda requirement: week_12
      return getattr(hlo, name)

  _export.hlo = _Patched()
  try:
    yield
  finally:
    _export.hlo = hlo


def export(cfg: ModelConfig, params, canvas_hw, path: str, *, batch: int = 1,
           platforms: Sequence[str] | None = None) -> None:
  """Writes the SavedModel directory `path` for one canvas and a fixed
  batch size (TF's XlaCallModule cannot refine the symbolic batch through
  jax's top_k decomposition, so the batch is static)."""
  h, w = (int(v) for v in canvas_hw)
  params = serving.as_numpy_params(params)

  def fn(p, images, image_hw, orig_hw):
    dets = step.forward(p, images, image_hw, orig_hw, cfg)
    return {k: dets[k] for k in serving.OUTPUT_KEYS}

  kwargs = {"native_serialization_platforms": tuple(platforms)} \
      if platforms else {}
  tf_fn = jax2tf.convert(
      fn, with_gradient=False, **kwargs)
  module = tf.Module()
  module.params = tf.nest.map_structure(
      lambda x: tf.Variable(x, trainable=False), params)

  @tf.function(autograph=False, input_signature=(
      tf.TensorSpec([batch, h, w, 3], tf.uint8, name="images"),
      tf.TensorSpec([batch, 2], tf.int32, name="image_hw"),
      tf.TensorSpec([batch, 2], tf.int32, name="orig_hw")))
  def serve(images, image_hw, orig_hw):
    return tf_fn(module.params, images, image_hw, orig_hw)

  module.serve = serve
  with _stablehlo_for_tf():
    tf.saved_model.save(module, path, signatures={"serving_default": serve})


def load(path: str):
  """fn(images, image_hw, orig_hw) -> dict of NumPy outputs, from a fresh
  tf.saved_model.load of `path`."""
  signature = tf.saved_model.load(path).signatures["serving_default"]

  def fn(images, image_hw, orig_hw):
    out = signature(images=tf.constant(np.asarray(images, np.uint8)),
                    image_hw=tf.constant(np.asarray(image_hw, np.int32)),
                    orig_hw=tf.constant(np.asarray(orig_hw, np.int32)))
    return {k: v.numpy() for k, v in out.items()}

  return fn
