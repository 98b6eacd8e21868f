"""fcos_jax: FCOS (anchor-free one-stage detection) in JAX/Flax."""

__version__ = "0.1.0"
