"""The training state: one pytree, replicated over the mesh."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
  """Everything a run needs to continue exactly where it stopped.

  step:           number of optimizer updates applied so far.
  params:         model parameters (float32).
  opt_state:      optimizer state (no entries for frozen parameters).
  first_bad_step: -1, or the first step whose loss was NaN/inf. Once set,
                  updates are skipped so the parameters stay the last good
                  ones; the host sees it at the next log and stops the run.
  """

  step: jax.Array
  params: Any
  opt_state: Any
  first_bad_step: jax.Array

  @classmethod
  def create(cls, params, tx: optax.GradientTransformation) -> "TrainState":
    return cls(step=jnp.zeros((), jnp.int32), params=params,
               opt_state=tx.init(params),
               first_bad_step=jnp.full((), -1, jnp.int32))
