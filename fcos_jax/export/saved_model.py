"""A TF SavedModel of the serving function (jax2tf, native serialization:
the StableHLO program runs in TF's XlaCallModule op).

The parameters are tf.Variables of the SavedModel (its variables/ folder).
Two kinds:

- `export`: one canvas; `serving_default` takes the three inputs by name
  (a fixed batch size) and returns the four outputs:

    m = tf.saved_model.load(path)
    out = m.signatures["serving_default"](images=..., image_hw=..., orig_hw=...)

- `export_images`: every canvas and the resize rule inside; `serving_default`
  takes one uint8 image of any size:

    out = m.signatures["serving_default"](image=tf.io.decode_jpeg(data))
"""

from __future__ import annotations

import contextlib
from typing import Sequence

import numpy as np
from jax.experimental import jax2tf

from fcos_jax.data import transforms
from fcos_jax.data.tf_setup import tf
from fcos_jax.export import serving
from fcos_jax.core import detect
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


def _converted(cfg: ModelConfig, platforms):
  """The serving function as a TF function of (params, images, image_hw,
  orig_hw), one XlaCallModule per input shape it is traced with."""

  def fn(p, images, image_hw, orig_hw):
    dets = detect.forward(p, images, image_hw, orig_hw, cfg)
    return {k: dets[k] for k in serving.OUTPUT_KEYS}

  kwargs = {"native_serialization_platforms": tuple(platforms)} \
      if platforms else {}
  return jax2tf.convert(fn, with_gradient=False, **kwargs)


def _module_with(params) -> tf.Module:
  """A tf.Module holding the parameters as (untrainable) tf.Variables."""
  module = tf.Module()
  module.params = tf.nest.map_structure(
      lambda x: tf.Variable(x, trainable=False),
      serving.as_numpy_params(params))
  return module


def _save(module, signature, path):
  module.serve = signature
  with _stablehlo_for_tf():
    tf.saved_model.save(module, path,
                        signatures={"serving_default": signature})


def export(cfg: ModelConfig, params, canvas_hw, path: str, *, batch: int = 1,
           platforms: Sequence[str] | None = None) -> None:
  """Writes the SavedModel directory `path` for one canvas and a fixed
  batch size (TF's XlaCallModule cannot refine a symbolic batch through
  jax's top_k lowering; TF Serving's batching pads to fixed sizes anyway).

  The signature is XLA-compiled as a whole (`jit_compile`): without it
  TF runs the XlaCallModule op by op on demand, about 10% slower."""
  h, w = (int(v) for v in canvas_hw)
  tf_fn = _converted(cfg, platforms)
  module = _module_with(params)

  @tf.function(autograph=False, jit_compile=True, input_signature=(
      tf.TensorSpec([batch, h, w, 3], tf.uint8, name="images"),
      tf.TensorSpec([batch, 2], tf.int32, name="image_hw"),
      tf.TensorSpec([batch, 2], tf.int32, name="orig_hw")))
  def serve(images, image_hw, orig_hw):
    return tf_fn(module.params, images, image_hw, orig_hw)

  _save(module, serve, path)


def _bucket(out_hw, canvases):
  """TF ops: the canvas index for a resized size, by the evaluation
  pipeline's bucket rule (least overflow, then the smallest area), and
  whether it fits within that rule's few pixels of slack."""
  ch = tf.constant([c[0] for c in canvases], tf.int64)
  cw = tf.constant([c[1] for c in canvases], tf.int64)
  oh, ow = tf.cast(out_hw[0], tf.int64), tf.cast(out_hw[1], tf.int64)
  over = tf.maximum(oh - ch, 0) + tf.maximum(ow - cw, 0)
  key = tf.cast(over, tf.float64) * 1e12 + tf.cast(ch * cw, tf.float64)
  index = tf.argmin(key, output_type=tf.int32)
  slack = 2.0 + 0.01 * tf.cast(tf.maximum(oh, ow), tf.float64)
  return index, tf.cast(tf.gather(over, index), tf.float64) <= slack


def export_images(cfg: ModelConfig, params, canvases, path: str, *,
                  min_size: int, max_size: int,
                  platforms: Sequence[str] | None = None) -> None:
  """Writes a SavedModel whose `serving_default` takes ONE uint8 RGB image
  of any size (`image` [h, w, 3]) and returns its detections in original
  pixels (boxes [K, 4], scores [K], classes [K], valid [K]).

  Inside: the resize rule of predict.py and evaluation (the same TF ops,
  `fcos_jax.data.transforms`), the canvas chosen by the bucket rule, then
  that canvas's program. Not XLA-compiled as a whole, since every image
  size would compile anew; each canvas's program is compiled once."""
  canvases = tuple(tuple(int(v) for v in c) for c in canvases)
  tf_fn = _converted(cfg, platforms)
  module = _module_with(params)
  names = ", ".join(f"{h}x{w}" for h, w in canvases)

  @tf.function(autograph=False, input_signature=(
      tf.TensorSpec([None, None, 3], tf.uint8, name="image"),))
  def serve(image):
    orig_hw = tf.shape(image)[:2]
    out_hw = transforms.resized_hw(orig_hw, min_size, max_size)
    index, fits = _bucket(out_hw, canvases)
    check = tf.debugging.Assert(fits, [
        f"fcos_jax SavedModel: the image resizes (short side {min_size}, "
        f"long side at most {max_size}) to", out_hw,
        f"which fits none of the exported canvases {names}."])

    def branch(canvas):
      def run():
        hw = tf.minimum(out_hw, canvas)
        resized = tf.ensure_shape(transforms.pad_image(
            transforms.resize_image(image, hw), tf.constant(canvas)),
            [*canvas, 3])
        out = tf_fn(module.params, resized[None], hw[None],
                    tf.cast(orig_hw, tf.int32)[None])
        return {k: out[k][0] for k in serving.OUTPUT_KEYS}
      return run

    with tf.control_dependencies([check]):
      return tf.switch_case(index, [branch(c) for c in canvases])

  _save(module, serve, path)


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


def load_images(path: str):
  """fn(image uint8 [h, w, 3]) -> dict of NumPy outputs, from a fresh
  tf.saved_model.load of an `export_images` SavedModel."""
  signature = tf.saved_model.load(path).signatures["serving_default"]

  def fn(image):
    out = signature(image=tf.constant(np.asarray(image, np.uint8)))
    return {k: v.numpy() for k, v in out.items()}

  return fn
