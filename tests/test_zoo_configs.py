"""configs/zoo: one config per released official FCOS model, with the
schedule, batch and multi-scale setting of its official config and the AP
its README publishes; the same architecture as the official converter's
preset of that name."""

import importlib
import pathlib

import pytest

from fcos_jax.convert import official
from fcos_jax.model.config_dict import model_config_from

ZOO = pathlib.Path(__file__).resolve().parents[1] / "configs" / "zoo"

# The official README's model tables (COCO minival AP), and whether the
# model was trained multi-scale.
README = {
    "FCOS_imprv_R_50_FPN_1x": (38.7, False),
    "FCOS_imprv_dcnv2_R_50_FPN_1x": (42.3, False),
    "FCOS_imprv_R_101_FPN_2x": (43.0, True),
    "FCOS_imprv_dcnv2_R_101_FPN_2x": (45.6, True),
    "FCOS_imprv_X_101_32x8d_FPN_2x": (44.0, True),
    "FCOS_imprv_dcnv2_X_101_32x8d_FPN_2x": (46.4, True),
    "FCOS_imprv_X_101_64x4d_FPN_2x": (44.7, True),
    "FCOS_imprv_dcnv2_X_101_64x4d_FPN_2x": (46.6, True),
    "FCOS_R_50_FPN_1x": (37.1, False),
    "FCOS_R_101_FPN_2x": (41.4, True),
    "FCOS_X_101_32x8d_FPN_2x": (42.5, True),
    "FCOS_X_101_64x4d_FPN_2x": (43.0, True),
    "FCOS_syncbn_bs32_c128_MNV2_FPN_1x": (30.9, False),
    "FCOS_syncbn_bs32_MNV2_FPN_1x": (33.1, False),
    "FCOS_bn_bs16_MNV2_FPN_1x": (31.0, False),
}


def test_one_config_per_released_model():
  assert sorted(p.stem for p in ZOO.glob("FCOS_*.py")) == sorted(README)


@pytest.mark.parametrize("name", sorted(README))
def test_zoo_config(name):
  module = importlib.import_module(f"configs.zoo.{name}")
  ap, multi_scale = README[name]
  assert module.PUBLISHED_AP == ap
  assert "published, not measured here" in (ZOO / f"{name}.py").read_text()
  config = module.get_config()
  cfg = model_config_from(config.model)
  two_x = "_2x" in name
  assert config.num_train_steps == (180000 if two_x else 90000)
  assert tuple(config.optim.decay_steps) == (
      (120000, 160000) if two_x else (60000, 80000))
  assert config.data.min_size == ((640, 800) if multi_scale else 800)
  batch = 32 if "bs32" in name else 16
  assert config.global_batch_size == config.optim.base_batch_size == batch
  assert config.optim.base_lr == 0.01
  # Architecture, from the name.
  assert cfg.num_classes == 80 and cfg.p6_from == "p5"
  assert (cfg.quality.on == "reg") == ("imprv" in name)
  assert bool(cfg.dcn_stages) == cfg.head_dcn == ("dcnv2" in name)
  if "MNV2" in name:
    assert (cfg.backbone, cfg.freeze_at, cfg.bn_eps) == ("mobilenet_v2", 0, 1e-5)
    assert cfg.fpn_channels == (128 if "c128" in name else 256)
    assert config.init_backbone_format == "mobilenet_v2_official"
    return
  assert cfg.backbone == "resnet" and cfg.bn_eps == 0.0 and cfg.input_bgr
  assert cfg.depth == (50 if "_50_" in name else 101)
  groups = {"32x8d": (32, 8), "64x4d": (64, 4)}
  x = next((v for k, v in groups.items() if k in name), (1, 64))
  assert (cfg.groups, cfg.width_per_group) == x
  # MSRA ResNets have the stride in the 1x1, FAIR ResNeXts in the 3x3.
  assert cfg.stride_in_1x1 == (x[0] == 1)
  if cfg.dcn_stages:
    assert cfg.dcn_stages == ((4, 5) if x[0] > 1 else (3, 4, 5))
  assert config.init_backbone_format == "detectron_pkl"
  if name in official.PUBLISHED:  # The converter's preset agrees.
    assert cfg == official.published_config(name)
    assert official.PUBLISHED[name].ap == ap
