"""A released official FCOS model (tianzhi0549/FCOS) as a run config, for
its converted checkpoint: `--config configs/official_fcos.py:MODEL_NAME`,
e.g. `configs/official_fcos.py:FCOS_imprv_dcnv2_R_50_FPN_1x`. The model is
`fcos_jax.convert.official.published_config(MODEL_NAME)` (the names are the
keys of `fcos_jax.convert.official.PUBLISHED`); the data, evaluation and
schedule fields are those of configs/default.py (COCO 2017 from TFDS;
evaluation at short side 800, long side at most 1333, as the official
test settings)."""

from configs import default
from fcos_jax.convert import official
from fcos_jax.train.config import model_config_dict


def get_config(model_name: str = "FCOS_imprv_R_50_FPN_1x"):
  config = default.get_config()
  config.model = model_config_dict(official.published_config(model_name))
  return config
