"""Official FCOS_imprv_R_50_FPN_1x (38.7 AP): the defaults."""

from fcos_jax.configs import default


def get_config():
  return default.get_config()
