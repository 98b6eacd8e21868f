"""Weight converters from other frameworks into fcos_jax variables."""
