"""`jax.export`: the serving function as serialized StableHLO.

The file holds the whole program (parameters as constants, NMS included)
for the platforms it was lowered for; `load` needs only jax:

    exp = jax.export.deserialize(open(path, "rb").read())
    run = jax.jit(exp.call)   # jit it: a bare exp.call re-dispatches each time
    dets = run(images, image_hw, orig_hw)
"""

from __future__ import annotations

from typing import Sequence

import jax
from jax import export as jax_export

from fcos_jax import storage
from fcos_jax.export import serving
from fcos_jax.model.config import ModelConfig


def export(cfg: ModelConfig, params, canvas_hw, *, batch: int | None = None,
           platforms: Sequence[str] | None = None) -> jax_export.Exported:
  """Exported serving function for one canvas.

  batch: a fixed batch size, or None for any batch (a symbolic dimension).
  platforms: e.g. ("cpu", "cuda", "tpu"); None = this machine's backend.
  """
  fn = serving.serving_function(cfg, serving.as_numpy_params(params))
  b = jax_export.symbolic_shape("b")[0] if batch is None else int(batch)
  kwargs = {"platforms": tuple(platforms)} if platforms else {}
  return jax_export.export(jax.jit(fn), **kwargs)(
      *serving.input_specs(canvas_hw, b))


def save(exported: jax_export.Exported, path: str) -> None:
  storage.write_bytes_atomic(path, bytes(exported.serialize()))


def load(path: str) -> jax_export.Exported:
  """The deserialized program; call it with `.call(images, image_hw, orig_hw)`."""
  return jax_export.deserialize(bytearray(storage.read_bytes(path)))
