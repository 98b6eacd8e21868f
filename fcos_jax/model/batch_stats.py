"""Running statistics of the trainable BatchNorm (backbone_norm="bn").

The model writes each BatchNorm's batch mean, biased variance and value
count to the `BATCH_STATS` collection when that collection is mutable; the
train step then moves the `mean` / `var` parameters towards them, as
PyTorch's BatchNorm2d does in training:

  mean <- (1 - m) mean + m batch_mean
  var  <- (1 - m) var  + m batch_var * n / (n - 1)    (unbiased)

with m = cfg.bn_momentum and n the values per channel in the batch.
"""

from __future__ import annotations

from flax import traverse_util

from fcos_jax.model.resnet import BATCH_STATS


def uses_batch_stats(cfg) -> bool:
  return cfg.backbone_norm == "bn"


def update_running_stats(params, stats, momentum: float):
  """`params` with every BatchNorm's mean and var moved towards `stats`
  (the `BATCH_STATS` collection of one training forward)."""
  flat = traverse_util.flatten_dict(params)
  new = dict(flat)
  batch = traverse_util.flatten_dict(stats)
  for path, value in batch.items():
    module, leaf = path[:-1], path[-1]
    if leaf == "count":
      continue
    if leaf == "var":  # Unbiased, as PyTorch keeps it.
      n = batch[module + ("count",)]
      value = value * n / (n - 1.0)
    if path not in flat:
      raise ValueError(f"update_running_stats: {'/'.join(path)} has batch "
                       "statistics but no running-statistics parameter.")
    new[path] = (1.0 - momentum) * flat[path] + momentum * value
  return traverse_util.unflatten_dict(new)


__all__ = ["BATCH_STATS", "update_running_stats", "uses_batch_stats"]
