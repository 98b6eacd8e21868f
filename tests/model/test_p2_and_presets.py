"""The P2 level (config.with_p2: C2 -> P2 in the FPN) and the presets of
the FCOS family: iou (AdelaiDet), atss (sfzhang15/ATSS), p2."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fcos_jax import errors
from fcos_jax.core.locations import compute_locations
from fcos_jax.model import config as config_lib
from fcos_jax.model.config import ModelConfig
from fcos_jax.model.config_dict import model_config_dict, model_config_from
from fcos_jax.model.fcos import FCOS, init_variables

TINY = dict(depth=18, width=8, fpn_channels=16, gn_groups=4, head_convs=1,
            num_classes=3)


def test_with_p2_splits_the_first_range():
  cfg = config_lib.p2()
  assert cfg.strides == (4, 8, 16, 32, 64, 128)
  assert cfg.assign.size_ranges == (
      (-1.0, 32.0), (32.0, 64.0), (64.0, 128.0), (128.0, 256.0),
      (256.0, 512.0), (512.0, float("inf")))
  small = config_lib.with_p2(config_lib.official(
      size_ranges=((-1.0, 32.0), (32.0, 64.0), (64.0, 128.0), (128.0, 256.0),
                   (256.0, float("inf")))))
  assert small.assign.size_ranges[:2] == ((-1.0, 16.0), (16.0, 32.0))
  # ATSS has no size ranges: it only gains the level.
  assert config_lib.with_p2(config_lib.atss()).strides == config_lib.P2_STRIDES
  with pytest.raises(errors.ConfigError, match="with_p2"):
    config_lib.with_p2(small)


def test_p2_model_levels_match_locations():
  cfg = config_lib.with_p2(config_lib.official(**TINY))
  variables = init_variables(cfg, jax.random.key(0))
  fpn = variables["params"]["fpn"]
  assert "lateral2" in fpn and "output2" in fpn
  # P3-P7 configs keep their parameter tree (no lateral2 / output2).
  plain = jax.eval_shape(lambda: init_variables(
      config_lib.official(**TINY), jax.random.key(0)))
  assert "lateral2" not in plain["params"]["fpn"]
  canvas = (72, 100)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(1, *canvas, 3)),
                  jnp.float32)
  levels = FCOS(cfg).apply(variables, x, method=FCOS.level_outputs)
  locs = compute_locations(canvas, cfg)
  assert [lv[0].shape[1:3] for lv in levels] == list(locs.level_sizes)
  assert locs.level_sizes[0] == (18, 25)  # ceil(72 / 4), ceil(100 / 4)
  # P2 = output2(lateral2(C2) + up(P3's sum)): its lateral changes P2's
  # outputs and leaves P3's alone (the top-down path runs from P5 down).
  bumped = jax.tree.map(lambda a: a, variables)
  bumped["params"]["fpn"]["lateral2"]["bias"] = (
      bumped["params"]["fpn"]["lateral2"]["bias"] + 1.0)
  again = FCOS(cfg).apply(bumped, x, method=FCOS.level_outputs)
  assert not np.allclose(levels[0][0], again[0][0])
  np.testing.assert_array_equal(levels[1][0], again[1][0])


def test_p2_needs_a_resnet():
  cfg = config_lib.with_p2(config_lib.official(
      backbone="mobilenet_v2", bn_eps=1e-5, **TINY))
  with pytest.raises(errors.ConfigError, match="P2 needs C2"):
    init_variables(cfg, jax.random.key(0))


@pytest.mark.parametrize("preset", ["iou", "atss", "p2"])
def test_presets_by_name_and_round_trip(preset):
  cfg = ModelConfig.from_dict({"preset": preset, "num_classes": 5})
  assert cfg == config_lib.PRESETS[preset](num_classes=5)
  assert model_config_from(model_config_dict(cfg)) == cfg


def test_atss_preset_is_the_atss_repository_r50_1x():
  cfg = config_lib.atss()
  assert cfg.assign == config_lib.ATSSAssign(topk=9, anchor_scale=8.0)
  assert (cfg.loss.name, cfg.loss.reg_loss, cfg.loss.reg_weight,
          cfg.loss.reg_weighting) == ("atss", "giou", 2.0, "centerness")
  assert cfg.quality.on == "reg" and cfg.p6_from == "p5"
  assert cfg.head_norm == "gn" and cfg.norm_reg_targets and cfg.use_scale
  # Switching back to FCOS's choices starts from their defaults.
  back = cfg.replace(assign={"name": "fcos"}, loss={"name": "fcos"})
  assert back == config_lib.official()
  with pytest.raises(errors.ConfigError, match="topk"):
    cfg.replace(assign={"topk": 0})


@pytest.mark.parametrize("name, preset", [
    ("fcos_iou_r50_1x", "iou"), ("atss_r50_1x", "atss")])
def test_coco_configs_are_their_presets(name, preset):
  import importlib
  from fcos_jax.configs import default
  module = importlib.import_module(f"fcos_jax.configs.{name}")
  got = model_config_from(module.get_config().model)
  layout = model_config_from(default.get_config().model)
  keep = ("stride_in_1x1", "bn_eps", "input_bgr", "input_range", "pixel_mean",
          "pixel_std")
  assert got == config_lib.PRESETS[preset](
      num_classes=80, **{k: getattr(layout, k) for k in keep})
  assert module.PUBLISHED_AP == {"iou": 39.4, "atss": 39.3}[preset]


@pytest.mark.parametrize("name, parts", [
    ("synthetic_iou_cpu", {"quality": config_lib.IoUQuality(),
                           "reg_weighting": "none"}),
    ("synthetic_atss_cpu", {"assign": config_lib.ATSSAssign(),
                            "loss": config_lib.ATSSLoss()}),
])
def test_synthetic_variants_change_only_the_preset_part(name, parts):
  import importlib
  from fcos_jax.configs import synthetic_cpu
  base = synthetic_cpu.get_config()
  got = importlib.import_module(f"fcos_jax.configs.{name}").get_config()
  assert model_config_from(got.model) == model_config_from(
      base.model).replace(**parts)
  base.model = got.model
  assert got.to_dict() == base.to_dict()  # data, schedule: the same


def test_synthetic_p2_config():
  from fcos_jax.configs import synthetic_cpu, synthetic_p2_cpu
  got = model_config_from(synthetic_p2_cpu.get_config().model)
  assert got == config_lib.with_p2(
      model_config_from(synthetic_cpu.get_config().model))
  assert got.assign.size_ranges[:2] == ((-1.0, 16.0), (16.0, 32.0))
