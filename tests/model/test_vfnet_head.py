"""The VFNet head (fcos_jax/model/vfnet_head.py) against a plain-PyTorch
restatement of mmdetection's VFNetHead.forward_single (tests/vfnet_torch.py:
torch + torchvision.ops.deform_conv2d) with the same random weights:
outputs, and the gradient that reaches the initial box's conv through the
star offsets (gradient_mul); the model's outputs and optimizer groups."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import traverse_util

import vfnet_torch
from random_params import random_head_params
from fcos_jax.model import config as config_lib
from fcos_jax.model.vfnet_head import VFNetHead

C, F, GROUPS = 3, 32, 8


def _cfg(**kw):
  return config_lib.vfnet(num_classes=C, fpn_channels=F, gn_groups=GROUPS,
                          head_convs=2, **kw)


def _random_params(cfg, x, seed):
  """Every parameter drawn at random (GN-followed conv biases 0, as
  mmdetection's ConvModules have none)."""
  def gn_biases(path, shape, rng):
    if path[-1] == "bias" and path[0].startswith(
        ("cls_tower", "box_tower", "vfnet_reg_conv")):
      return np.zeros(shape)
    return None
  return random_head_params(VFNetHead(cfg), x, seed, gn_biases)


def _torch_head(cfg, params):
  head = vfnet_torch.VFNetHead(
      C, F, stacked_convs=cfg.head_convs, groups=GROUPS,
      gradient_mul=cfg.quality.gradient_mul,
      bbox_norm_type=cfg.quality.bbox_norm)
  vfnet_torch.load_flax_head(head, params)
  return head


@pytest.mark.parametrize("level,bbox_norm", [(0, "stride"), (1, "stride"),
                                             (0, "reg_denom")])
def test_vfnet_head_matches_mmdetection_forward(level, bbox_norm):
  cfg = _cfg(bbox_norm=bbox_norm)
  rng = np.random.default_rng(level)
  x = rng.normal(0, 1, (2, 12, 16, F)).astype(np.float32)
  params = _random_params(cfg, x, seed=level + 1)
  head = _torch_head(cfg, params)
  tx = torch.tensor(x.transpose(0, 3, 1, 2))
  want = [t.detach().numpy().transpose(0, 2, 3, 1)
          for t in head.forward_single(tx, level)]  # cls, initial, refined

  apply = jax.jit(lambda p: VFNetHead(cfg).apply({"params": p}, x, level))
  got_cls, got_refine, got_init = apply(params)
  for name, got, w in (("cls", got_cls, want[0]), ("initial", got_init, want[1]),
                       ("refined", got_refine, want[2])):
    assert got.shape == w.shape, name
    np.testing.assert_allclose(got, w, rtol=0, atol=1e-4 * np.abs(w).max(),
                               err_msg=name)
  # A real test of the sampling: boxes of a few strides, inside the map.
  assert 0.3 < np.median(want[1]) / cfg.strides[level] < 30

  # The gradient of (weighted) class and refined outputs reaches the initial
  # box's conv only through the star offsets, scaled by gradient_mul.
  wc = rng.normal(size=want[0].shape).astype(np.float32)
  wr = rng.normal(size=want[2].shape).astype(np.float32)

  def objective(p):
    cls, refine, _ = apply(p)
    return jnp.sum(cls * wc) + jnp.sum(refine * wr / cfg.strides[level])

  grads = jax.jit(jax.grad(objective))(params)
  cls_t, _, refine_t = head.forward_single(tx, level)
  (torch.sum(cls_t * torch.tensor(wc.transpose(0, 3, 1, 2)))
   + torch.sum(refine_t * torch.tensor(wr.transpose(0, 3, 1, 2))
               / cfg.strides[level])).backward()
  for name in ("vfnet_reg", "vfnet_cls_dconv", "vfnet_reg_refine"):
    g = np.asarray(grads[name]["kernel"]).transpose(3, 2, 0, 1)
    w = getattr(head, name).weight.grad.numpy()
    assert np.abs(w).max() > 0, name
    np.testing.assert_allclose(g, w, rtol=0, atol=2e-3 * np.abs(w).max(),
                               err_msg=name)


def test_vfnet_model_outputs_and_optimizer_groups():
  from fcos_jax.core.locations import compute_locations
  from fcos_jax.model.fcos import FCOS, init_variables
  from fcos_jax.train import param_groups
  cfg = config_lib.vfnet(num_classes=C, depth=18, width=8, freeze_at=0,
                         backbone_norm="gn", fpn_channels=F, gn_groups=GROUPS,
                         head_convs=1)
  params = init_variables(cfg, jax.random.PRNGKey(0))["params"]
  head = params["head"]
  assert "centerness" not in head and "cls_logits" not in head
  assert head["vfnet_cls_dconv"]["kernel"].shape == (3, 3, F, F)
  assert "bias" not in head["vfnet_cls_dconv"]
  np.testing.assert_allclose(head["vfnet_cls"]["bias"],
                             -np.log(0.99 / 0.01), rtol=1e-6)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 64, 64, 3)),
                  jnp.float32)
  out = jax.jit(FCOS(cfg).apply)({"params": params}, x)
  p = compute_locations((64, 64), cfg).num_locations
  assert out.centerness is None and out.box_initial.shape == (2, p, 4)
  assert out.check(p, C, "test") == 2
  assert np.all(np.asarray(out.box_initial) > 0)
  labels = traverse_util.flatten_dict(param_groups.param_labels(params, cfg))
  assert labels[("head", "vfnet_reg_norm", "scale")] == "norm"
  assert labels[("head", "vfnet_reg_norm", "bias")] == "bias"
  assert labels[("head", "vfnet_cls_dconv", "kernel")] == "weight"
  assert labels[("head", "scale_refine_2")] == "weight"
