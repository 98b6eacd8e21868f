"""The main command's synthetic CPU run (configs/synthetic_cpu.py) with a P2
level (`with_p2`): strides 4 .. 128, P2 from C2, P2 taking the boxes below
16 px and P3 16-32 px (the synthetic config's first range, -1..32, split in
two as with_p2 does; COCO's would be below 32 and 32-64).

  python train.py --config configs/synthetic_p2_cpu.py --workdir /tmp/fcos_p2
  python analyze.py bpr --config configs/synthetic_p2_cpu.py --out /tmp/bpr_p2
"""

from fcos_jax.configs import synthetic_cpu
from fcos_jax.model import config as model_presets
from fcos_jax.model.config_dict import model_config_dict, model_config_from


def get_config():
  config = synthetic_cpu.get_config()
  config.model = model_config_dict(
      model_presets.with_p2(model_config_from(config.model)))
  return config
