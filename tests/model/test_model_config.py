"""The composed model config: parts, named choices, flat and nested
spellings, and the resume policy that follows from the part."""

import dataclasses

import ml_collections
import pytest

from fcos_jax import errors
from fcos_jax.model import config as config_lib
from fcos_jax.model.config import ModelConfig
from fcos_jax.model.config_dict import model_config_dict, model_config_from
from fcos_jax.run import record


def test_parts_are_frozen_and_hashable():
  cfg = config_lib.official()
  assert hash(cfg) == hash(config_lib.official())
  with pytest.raises(dataclasses.FrozenInstanceError):
    cfg.inference.score_thresh = 0.5  # type: ignore[misc]


def test_flat_and_nested_spellings_agree():
  flat = ModelConfig.from_dict({"depth": 18, "score_thresh": 0.3,
                                "reg_loss": "iou", "centerness_on": "cls",
                                "dtype": "bfloat16"})
  nested = ModelConfig.from_dict({
      "depth": 18, "inference": {"score_thresh": 0.3},
      "loss": {"name": "fcos", "reg_loss": "iou"},
      "quality": {"name": "centerness", "on": "cls"},
      "numerics": {"dtype": "bfloat16"}})
  assert flat == nested
  assert flat.inference.score_thresh == 0.3 and flat.quality.on == "cls"


def test_config_dict_round_trip():
  cfg = config_lib.paper(num_classes=3, score_thresh=0.2)
  d = model_config_dict(cfg)
  assert d.inference.score_thresh == 0.2 and d.quality.on == "cls"
  d.inference.nms_iou = 0.5  # --config.model.inference.nms_iou=0.5
  assert model_config_from(d) == cfg.replace(nms_iou=0.5)


@pytest.mark.parametrize("values, match", [
    ({"no_such_field": 1}, "unknown key 'no_such_field'"),
    ({"assign": {"name": "nope"}}, r"model.assign.name='nope': must be one of \['atss', 'fcos', 'tal'\]"),
    ({"loss": {"gamma": 2.0}}, r"model.loss: unknown key\(s\) \['gamma'\]"),
    ({"inference": {"score_thresh_on": "max"}}, "score_thresh_on='max'"),
    ({"assign": {"center_sampling_radius": -1.0}}, "center_sampling_radius=-1.0"),
])
def test_bad_values_are_one_config_error(values, match):
  with pytest.raises(errors.ConfigError, match=match):
    ModelConfig.from_dict(values)


def test_a_new_named_choice_is_added_beside_fcos(monkeypatch):
  @dataclasses.dataclass(frozen=True)
  class NearestAssign:
    name: str = "nearest"
    k: int = 9
  monkeypatch.setitem(config_lib.ASSIGNERS, "nearest", NearestAssign)
  cfg = ModelConfig.from_dict({"assign": {"name": "nearest", "k": 4}})
  assert cfg.assign == NearestAssign(k=4)
  assert cfg.loss == config_lib.FCOSLoss()  # The other parts are untouched.


def _run_config(model: ModelConfig, **top):
  c = ml_collections.ConfigDict({"num_train_steps": 8,
                                 "allow_config_change": False, **top})
  c.model = model_config_dict(model)
  return c


@pytest.mark.parametrize("change, policy", [
    (dict(score_thresh=0.5), "free"),
    (dict(dtype="bfloat16"), "free"),
    (dict(reg_loss="iou"), "training"),
    (dict(center_sampling_radius=0.0), "training"),
    (dict(centerness_on="cls"), "architecture"),
    (dict(fpn_channels=128), "architecture"),
])
def test_resume_policy_follows_the_part(change, policy):
  old = record.as_plain(_run_config(config_lib.official()))
  new = _run_config(config_lib.official(**change))
  if policy == "free":
    assert record.check_resume(old, new, "config.json") == []
    return
  with pytest.raises(errors.ConfigChangeError,
                     match="another model" if policy == "architecture"
                     else "allow_config_change"):
    record.check_resume(old, new, "config.json")
  if policy == "training":
    new.allow_config_change = True
    assert len(record.check_resume(old, new, "config.json")) == 1


def test_a_flat_record_of_an_older_run_is_compared_by_part():
  # Records written before the parts existed hold the model flat.
  flat_model = {f.name: v for f in dataclasses.fields(ModelConfig)
                if f.name not in config_lib.PARTS
                for v in [getattr(config_lib.official(), f.name)]}
  flat_model.update(score_thresh=0.05, reg_loss="giou", centerness_on="reg")
  old = record.as_plain(ml_collections.ConfigDict(
      {"num_train_steps": 8, "model": flat_model}))
  same = _run_config(config_lib.official())
  assert record.check_resume(old, same, "config.json") == []
  with pytest.raises(errors.ConfigChangeError, match="model.loss.reg_loss"):
    record.check_resume(old, _run_config(config_lib.official(reg_loss="iou")),
                        "config.json")
  assert record.check_resume(
      old, _run_config(config_lib.official(score_thresh=0.5)), "config.json") == []
