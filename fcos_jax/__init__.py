"""fcos_jax: FCOS (anchor-free one-stage detection) in JAX/Flax."""

__version__ = "0.1.0"


def __getattr__(name):
  # Lazy, so `import fcos_jax` stays light (no jax/TF until used).
  if name == "Detector":
    from fcos_jax.inference.detector import Detector  # pylint: disable=import-outside-toplevel
    return Detector
  raise AttributeError(f"module 'fcos_jax' has no attribute {name!r}")
