"""Random parameters for the parity tests of a head against its PyTorch
restatement: every parameter redrawn, so that no zero init hides a
mismatch."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util


def random_head_params(head, x, seed, special=None):
  """`head`'s parameters (initialised on x at level 0), each redrawn:
  Scales uniform(0.5, 1.5), kernels N(0, 0.05), GroupNorm scales
  1 + N(0, 0.2), the rest N(0, 0.2). special(path, shape, rng) may return
  another value for a path (None: the rule above)."""
  params = jax.jit(lambda k: head.init(k, x, 0))(
      jax.random.PRNGKey(seed))["params"]
  rng = np.random.default_rng(seed)
  out = {}
  for path, v in traverse_util.flatten_dict(params).items():
    name, leaf = path[0], path[-1]
    new = special(path, v.shape, rng) if special else None
    if new is not None:
      pass
    elif name.startswith("scale"):
      new = rng.uniform(0.5, 1.5)
    elif leaf == "kernel":
      new = rng.normal(0, 0.05, v.shape)
    elif leaf == "scale":  # GroupNorm.
      new = 1 + rng.normal(0, 0.2, v.shape)
    else:
      new = rng.normal(0, 0.2, v.shape)
    out[path] = jnp.asarray(new, jnp.float32)
  return traverse_util.unflatten_dict(out)
