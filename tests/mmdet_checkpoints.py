"""Random weights with mmdetection's names and shapes, as its checkpoints
hold them, for the converter and command-line tests."""

import re

import numpy as np


def random_mmdet_state_dict(cfg, seed=0):
  """{name: array} for `cfg` (NumPy): He-scaled kernels, BatchNorm
  statistics near (0, 1), class biases at a low prior, BatchNorm's step
  counters, and for GFL the Integral's `project` buffer as older
  mmdetection saved it."""
  from fcos_jax.convert import mmdet
  rng = np.random.default_rng(seed)
  sd = {}
  for name, (path, shape) in mmdet.state_dict_names(cfg).items():
    shape = mmdet.mmdet_shape(shape, path)
    leaf = path[-1]
    if leaf == "kernel":
      v = rng.normal(size=shape) * np.sqrt(1.0 / np.prod(shape[1:]))
    elif leaf in ("var", "scale") or leaf.startswith("scale_"):
      v = rng.uniform(0.8, 1.2, shape)
    elif re.fullmatch(r"bbox_head\.[a-z]+_cls\.bias", name):
      v = np.full(shape, -4.0)
    else:
      v = 0.05 * rng.normal(size=shape)
    sd[name] = v.astype(np.float32)
  if cfg.quality.name == "gfl_joint":
    sd["bbox_head.integral.project"] = np.arange(
        cfg.quality.reg_max + 1, dtype=np.float32)
  for k in [k for k in sd if k.endswith("running_var")]:
    sd[k.replace("running_var", "num_batches_tracked")] = np.array(0)
  return sd


def save_state_dict(path, state_dict, **meta):
  """Saves {"meta", "state_dict"} with torch tensors, as mmdetection does."""
  import torch
  torch.save({"meta": dict({"mmdet_version": "2.20.0", "epoch": 12}, **meta),
              "state_dict": {k: torch.from_numpy(np.asarray(v))
                             for k, v in state_dict.items()}}, path)
