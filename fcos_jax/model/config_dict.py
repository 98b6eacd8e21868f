"""Between ml-collections run configs and the frozen `ModelConfig`."""

from __future__ import annotations

import dataclasses

import ml_collections

from fcos_jax.model.config import ModelConfig


def model_config_dict(cfg: ModelConfig) -> ml_collections.ConfigDict:
  """All fields of `cfg` as a ConfigDict, so each can be overridden with
  `--config.model.FIELD=value` (type-checked by ConfigDict)."""
  return ml_collections.ConfigDict(dataclasses.asdict(cfg))


def model_config_from(model: ml_collections.ConfigDict) -> ModelConfig:
  """The frozen config of `config.model`; unknown keys are refused by name."""
  return ModelConfig.from_dict(model.to_dict())
