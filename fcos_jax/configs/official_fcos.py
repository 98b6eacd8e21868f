"""A released FCOS model of the official repository (tianzhi0549/FCOS) or of
AdelaiDet as a run config, for its converted checkpoint:
`--config configs/official_fcos.py:MODEL_NAME`, e.g.
`configs/official_fcos.py:FCOS_imprv_dcnv2_R_50_FPN_1x`. The model is
`published_config(MODEL_NAME)` of `fcos_jax.convert.official` or
`fcos_jax.convert.adelaidet` (the names are the keys of their `PUBLISHED`,
which do not overlap); the data, evaluation and
schedule fields are those of configs/default.py (COCO 2017 from TFDS;
evaluation at short side 800, long side at most 1333, as the official
test settings)."""

from fcos_jax.configs import default
from fcos_jax.convert import adelaidet, official
from fcos_jax.model.config_dict import model_config_dict


def get_config(model_name: str = "FCOS_imprv_R_50_FPN_1x"):
  config = default.get_config()
  zoo = adelaidet if model_name in adelaidet.PUBLISHED else official
  config.model = model_config_dict(zoo.published_config(model_name))
  return config
