"""Process-local NumPy batches -> one global jax.Array per key."""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec


def to_global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh,
                    data_axis: str = "data") -> dict[str, jax.Array]:
  """Assembles each process's [B_local, ...] arrays into [B_global, ...].

  The leading (batch) axis is sharded over the mesh axis `data_axis`; the
  other axes are replicated. Every process must pass the same keys, shapes
  (the same canvas) and dtypes.
  """
  if data_axis not in mesh.axis_names:
    raise ValueError(f"to_global_batch: mesh has axes {mesh.axis_names}, no "
                     f"{data_axis!r}; pass data_axis=<the batch axis name>.")
  sharding = NamedSharding(mesh, PartitionSpec(data_axis))
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in local_batch.items()}
