"""Whole-model speed: our jitted train and eval steps against torchvision's
FCOS, on the same architecture, batch, canvas and boxes.

Ours (`fcos_jax.train.steps`, `fcos_jax.core.detect`):
  train: `train_step` with the official SGD (momentum, coupled L2, bias
         groups), state donated, as the training loop runs it: image
         normalisation, model, target assignment, loss, backward, update.
  infer: `eval_step`: normalisation, model, post-processing and NMS on the
         device; the uint8 batch is already on the device (no host decode).
  compile time (lower + compile), XLA's memory analysis (arguments +
  outputs + temporaries - aliased) and cost analysis (FLOPs).
torchvision (`FCOS` built as `fcos_resnet50_fpn` builds it when a pretrained
backbone is given: frozen BatchNorm, conv1 and layer1 frozen, as our
`freeze_at=2`; random weights, nothing downloaded):
  train: model(images, targets) in train mode (transform, model, matching,
         loss), backward, `torch.optim.SGD` step.
  infer: model(images) in eval mode: transform (normalise, resize, batch),
         model, post-processing, NMS. The images are float 0..1 tensors
         made before timing.
  min_size / max_size are set to the canvas, so its resize is the identity
  (it still runs the interpolation at scale 1.0).

This module never imports TensorFlow (the GPU mode relies on it).
"""

from __future__ import annotations

import functools
import time

import jax
import numpy as np

from benchmarks import timing
from tests.batches import dummy_batch
from fcos_jax.model.config import ModelConfig
from fcos_jax.model.fcos import init_variables
from fcos_jax.train.param_groups import param_labels
from fcos_jax.train import optimizer as optimizer_lib
from fcos_jax.train.state import TrainState
from fcos_jax.core.detect import eval_step
from fcos_jax.train.steps import train_step


def _cost_flops(compiled) -> float | None:
  """FLOPs from XLA's cost analysis (a dict, or a list of one in old jax)."""
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  return float(cost["flops"]) if cost and "flops" in cost else None


def _memory(compiled) -> dict | None:
  """XLA's buffer assignment: the device memory one call of the program
  needs (arguments + outputs + temporaries - buffers aliased/donated)."""
  m = compiled.memory_analysis()
  if m is None:
    return None
  out = {k: int(getattr(m, k + "_size_in_bytes", 0)) for k in
         ("argument", "output", "temp", "alias", "generated_code")}
  out["peak"] = out["argument"] + out["output"] + out["temp"] - out["alias"]
  return out


def _compile(jitted, *args):
  """AOT lower + compile; returns (compiled, seconds, flops, memory)."""
  start = time.perf_counter()
  compiled = jitted.lower(*args).compile()
  seconds = time.perf_counter() - start
  return compiled, seconds, _cost_flops(compiled), _memory(compiled)


def _block(tree):
  return jax.block_until_ready(tree)


class Ours:
  """Our compiled train step (batch `train_batch`) and eval steps (each of
  `infer_batches`) on one canvas, with their compile figures. `optim`: a
  config's `optim` (as `train.py` builds its optimizer from it); the
  official SGD of `default_optim_config()` when None."""

  def __init__(self, cfg: ModelConfig, canvas_hw, train_batch: int,
               infer_batches, num_boxes: int, seed: int = 0, optim=None):
    self.cfg = cfg
    self.last_loss = None
    params = init_variables(cfg, jax.random.key(seed))["params"]
    if optim is None:
      optim = optimizer_lib.default_optim_config()
    tx = optimizer_lib.make_optimizer(optim, train_batch,
                                      param_labels(params, cfg))
    schedule = optimizer_lib.lr_schedule(optim, train_batch)
    self.params = params
    self.state = jax.jit(lambda p: TrainState.create(p, tx))(params)
    self.figures = {}

    self.train_batch = jax.device_put(dummy_batch(
        train_batch, canvas_hw, num_boxes, cfg.num_classes, seed=seed))
    train = jax.jit(functools.partial(train_step, cfg=cfg, tx=tx,
                                      schedule=schedule), donate_argnums=0)
    self._train, secs, flops, mem = _compile(train, self.state,
                                             self.train_batch)
    self.figures["train"] = {"batch": train_batch, "compile_s": secs,
                             "flops": flops, "memory": mem}

    evaluate = jax.jit(functools.partial(eval_step, cfg=cfg))
    self._eval, self.eval_batches = {}, {}
    for b in infer_batches:
      self.eval_batches[b] = jax.device_put(dummy_batch(
          b, canvas_hw, num_boxes, cfg.num_classes, seed=seed))
      self._eval[b], secs, flops, mem = _compile(evaluate, params,
                                                 self.eval_batches[b])
      self.figures[f"infer_b{b}"] = {"batch": b, "compile_s": secs,
                                     "flops": flops, "memory": mem}

  def train_once(self):
    self.state, metrics = self._train(self.state, self.train_batch)
    self.last_loss = float(metrics["loss"])  # Waits for the step.

  def infer_once(self, b):
    _block(self._eval[b](self.params, self.eval_batches[b]))


def torch_targets(batch, device):
  """The valid boxes and labels of a `dummy_batch`, as torchvision's list."""
  import torch  # pylint: disable=import-outside-toplevel
  out = []
  for i in range(batch["boxes"].shape[0]):
    keep = batch["box_valid"][i] & ~batch["is_crowd"][i]
    out.append({
        "boxes": torch.from_numpy(batch["boxes"][i][keep]).to(device),
        "labels": torch.from_numpy(
            batch["classes"][i][keep].astype(np.int64)).to(device)})
  return out


def torch_images(batch, device):
  """uint8 [B, H, W, 3] -> list of float 0..1 [3, H, W] on `device`."""
  import torch  # pylint: disable=import-outside-toplevel
  x = torch.from_numpy(batch["image"]).to(device).permute(0, 3, 1, 2)
  return list((x.float() / 255.0).contiguous())


def build_torchvision_fcos(cfg: ModelConfig, canvas_hw):
  """torchvision's FCOS with the structure of `fcos_resnet50_fpn` under a
  pretrained backbone (FrozenBatchNorm2d, 3 trainable stages), random
  weights, ResNet of `cfg.depth`. torchvision's widths are fixed (stem 64,
  FPN 256): only the full-width torchvision preset is a true twin."""
  # pylint: disable=import-outside-toplevel
  from torchvision.models import resnet
  from torchvision.models.detection import FCOS
  from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
  from torchvision.ops import misc as misc_nn_ops
  from torchvision.ops.feature_pyramid_network import LastLevelP6P7
  backbone = getattr(resnet, f"resnet{cfg.depth}")(
      weights=None, norm_layer=misc_nn_ops.FrozenBatchNorm2d)
  trainable = 5 - cfg.freeze_at  # freeze_at=2 (stem + res2) -> 3 stages.
  backbone = _resnet_fpn_extractor(backbone, trainable,
                                   returned_layers=[2, 3, 4],
                                   extra_blocks=LastLevelP6P7(256, 256))
  return FCOS(backbone, cfg.num_classes, min_size=min(canvas_hw),
              max_size=max(canvas_hw), score_thresh=cfg.inference.score_thresh,
              nms_thresh=cfg.inference.nms_iou, detections_per_img=cfg.inference.max_detections,
              topk_candidates=cfg.inference.pre_nms_topk)


class Torchvision:
  """torchvision's train step and inference on the same batches as `Ours`.

  device: "cpu" or "cuda"; autocast: a torch dtype to run the forward under
  `torch.autocast` (bfloat16 on the GPU), or None for float32.
  """

  def __init__(self, cfg: ModelConfig, canvas_hw, train_batch: int,
               infer_batches, num_boxes: int, device="cpu", autocast=None,
               seed: int = 0):
    import torch  # pylint: disable=import-outside-toplevel
    self.torch = torch
    self.last_loss = None
    torch.manual_seed(seed)
    self.device, self.autocast = device, autocast
    self.model = build_torchvision_fcos(cfg, canvas_hw).to(device)
    batch = dummy_batch(train_batch, canvas_hw, num_boxes, cfg.num_classes,
                        seed=seed)
    self.images = torch_images(batch, device)
    self.targets = torch_targets(batch, device)
    self.eval_images = {b: torch_images(dummy_batch(
        b, canvas_hw, num_boxes, cfg.num_classes, seed=seed), device)
                        for b in infer_batches}
    params = [p for p in self.model.parameters() if p.requires_grad]
    lr = 0.01 * train_batch / 16  # Linear scaling, as ours.
    self.opt = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=1e-4)

  def _sync(self):
    if self.device != "cpu":
      self.torch.cuda.synchronize()

  def _autocast(self):
    import contextlib  # pylint: disable=import-outside-toplevel
    if self.autocast is None:
      return contextlib.nullcontext()
    return self.torch.autocast(self.device.split(":")[0], dtype=self.autocast)

  def train_once(self):
    self.model.train()
    with self._autocast():
      losses = self.model(self.images, self.targets)
      loss = sum(losses.values())
    self.opt.zero_grad(set_to_none=True)
    loss.backward()
    self.opt.step()
    self.last_loss = loss.item()  # Waits for the step (and the GPU).

  def infer_once(self, b):
    self.model.eval()
    with self.torch.inference_mode(), self._autocast():
      dets = self.model(self.eval_images[b])
    self._sync()
    return dets


def time_models(ours: Ours | None, theirs: Torchvision | None, repeats: int,
                infer_batches, memory: bool = True) -> dict:
  """Interleaved timings of the train step and of inference at each batch.

  Returns {"train": {"ours": ..., "torchvision": ...}, "infer_b1": ...};
  each entry has "s" (stats of seconds per call) and "rss_delta_bytes".
  """
  rows = {}
  tasks = [("train", lambda m: m.train_once)]
  tasks += [(f"infer_b{b}", lambda m, b=b: functools.partial(m.infer_once, b))
            for b in infer_batches]
  for name, get in tasks:
    fns = {}
    if ours is not None:
      fns["ours"] = get(ours)
    if theirs is not None:
      fns["torchvision"] = get(theirs)
    rows[name] = timing.time_interleaved(fns, repeats, warmup=1,
                                         memory=memory)
  return rows
