"""Official recipe, 2x schedule with multi-scale training (short side drawn
from [640, 800]): 180k steps, LR steps at 120k and 160k."""

from fcos_jax.configs import default


def get_config():
  config = default.get_config()
  config.num_train_steps = 180000
  config.optim.decay_steps = (120000, 160000)
  config.data.min_size = (640, 800)
  return config
