"""Checks of a run config's user-set fields, in one place, before anything
is written or compiled.

`validate(config, needs=...)` checks the types, ranges and shapes of the
fields of configs/default.py that the command uses; every problem is a
`ConfigError` naming the field, the value and a valid example. Every command
calls it through `fcos_jax.cli.common.setup`, with the parts it reads
(`needs`).

The model section is checked here for the fields a user typically sets by
hand (pixel statistics, num_classes, the inference thresholds and counts,
nested `model.inference.X` or flat `model.X`); its full check is
`fcos_jax.model.config_dict.model_config_from`.
"""

from __future__ import annotations

import math
import numbers

from fcos_jax.errors import ConfigError

# What each command reads: "train" (schedule, optimizer, checkpoints, data
# geometry), "eval" (evaluation batch, data geometry), "model".
ALL = ("train", "eval", "model")


def _fail(field: str, value, want: str, example: str):
  raise ConfigError(f"config.{field}={value!r}: {want}; e.g. "
                    f"--config.{field}={example}.")


def _is_int(v) -> bool:
  return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_number(v) -> bool:
  return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _get(config, field: str):
  node = config
  for part in field.split("."):
    if node is None or part not in node:
      return _MISSING
    node = node[part]
  return node


_MISSING = object()


def _positive_int(config, field, example, zero_ok=False):
  v = _get(config, field)
  if v is _MISSING:
    return
  if not _is_int(v) or v < 0 or (v == 0 and not zero_ok):
    _fail(field, v, "must be an integer " + (">= 0" if zero_ok else "> 0"),
          example)


def _finite_number(config, field, example, lo=None, hi=None, lo_open=False):
  v = _get(config, field)
  if v is _MISSING:
    return
  ok = _is_number(v) and math.isfinite(v)
  if ok and lo is not None:
    ok = v > lo if lo_open else v >= lo
  if ok and hi is not None:
    ok = v <= hi
  if not ok:
    rng = ""
    if lo is not None:
      rng += f" {'>' if lo_open else '>='} {lo}"
    if hi is not None:
      rng += f"{' and' if rng else ''} <= {hi}"
    _fail(field, v, f"must be a finite number{rng}", example)


def _size_pair(v) -> bool:
  return (isinstance(v, (tuple, list)) and len(v) == 2 and
          all(_is_int(x) and x > 0 for x in v))


def _check_data(config) -> None:
  if _get(config, "data") is _MISSING:
    return
  canvases = _get(config, "data.canvases")
  if canvases is not _MISSING:
    if (not isinstance(canvases, (tuple, list)) or not canvases or
        not all(_size_pair(c) for c in canvases)):
      _fail("data.canvases", canvases, "must be a non-empty tuple of (height, "
            "width) pairs of positive integers", '"((800,1344),(1344,800))"')
  min_size = _get(config, "data.min_size")
  if min_size is not _MISSING:
    if _is_int(min_size):
      if min_size <= 0:
        _fail("data.min_size", min_size, "must be > 0", "800")
    elif not (_size_pair(min_size) and min_size[0] <= min_size[1]):
      _fail("data.min_size", min_size, "must be a positive integer or a pair "
            "(lo, hi) of positive integers with lo <= hi", '"(640,800)"')
  _positive_int(config, "data.max_size", "1333")
  _positive_int(config, "data.max_boxes", "100")
  _finite_number(config, "data.flip_prob", "0.5", lo=0.0, hi=1.0)
  size = _get(config, "data.synthetic.image_size")
  if size is not _MISSING and not (
      (_is_int(size) and size > 0) or _size_pair(size)):
    _fail("data.synthetic.image_size", size, "must be a positive integer or "
          "an (height, width) pair", "256")
  for field in ("data.synthetic.num_train", "data.synthetic.num_val"):
    _positive_int(config, field, "200")
  source = _get(config, "data.source")
  if source is not _MISSING and source not in ("synthetic", "coco_format",
                                               "tfds"):
    _fail("data.source", source, "must be one of synthetic, coco_format, tfds",
          "coco_format")


def _check_train(config) -> None:
  _positive_int(config, "global_batch_size", "16")
  _positive_int(config, "num_train_steps", "90000")
  _positive_int(config, "log_every_steps", "20")
  _positive_int(config, "checkpoint_every_steps", "2500")
  _positive_int(config, "keep_checkpoints", "3")
  _positive_int(config, "keep_best_checkpoints", "0", zero_ok=True)
  _positive_int(config, "eval_every_steps", "0", zero_ok=True)
  _positive_int(config, "stop_check_every_steps", "10")
  _positive_int(config, "profile_steps", "0", zero_ok=True)
  _positive_int(config, "profile_first_step", "10", zero_ok=True)
  if _get(config, "optim") is _MISSING:
    return
  _finite_number(config, "optim.base_lr", "0.01", lo=0.0, lo_open=True)
  _positive_int(config, "optim.base_batch_size", "16")
  _finite_number(config, "optim.momentum", "0.9", lo=0.0, hi=1.0)
  for f in ("optim.weight_decay", "optim.weight_decay_norm",
            "optim.weight_decay_bias", "optim.grad_clip_norm"):
    _finite_number(config, f, "0.0001" if "decay" in f else "0.0", lo=0.0)
  _finite_number(config, "optim.bias_lr_factor", "2.0", lo=0.0)
  _positive_int(config, "optim.warmup_steps", "500", zero_ok=True)
  _finite_number(config, "optim.warmup_factor", "0.333", lo=0.0, hi=1.0)
  _finite_number(config, "optim.decay_factor", "0.1", lo=0.0)
  method = _get(config, "optim.warmup_method")
  if method is not _MISSING and method not in ("constant", "linear"):
    _fail("optim.warmup_method", method, "must be constant or linear",
          "linear")
  decay = _get(config, "optim.decay_steps")
  if decay is not _MISSING and not (
      isinstance(decay, (tuple, list)) and
      all(_is_int(s) and s > 0 for s in decay) and
      list(decay) == sorted(decay)):
    _fail("optim.decay_steps", decay, "must be a tuple of increasing positive "
          "step numbers", '"(60000,80000)"')


def _check_eval(config) -> None:
  _positive_int(config, "eval_batch_size", "8")


def _check_model(config) -> None:
  if _get(config, "model") is _MISSING:
    return
  for field in ("pixel_mean", "pixel_std"):
    v = _get(config, f"model.{field}")
    if v is _MISSING:
      continue
    if not (isinstance(v, (tuple, list)) and len(v) == 3 and
            all(_is_number(x) and math.isfinite(x) for x in v)):
      _fail(f"model.{field}", v, "must be 3 numbers, one per input channel",
            '"(0.485,0.456,0.406)"' if field == "pixel_mean"
            else '"(0.229,0.224,0.225)"')
    if field == "pixel_std" and any(x <= 0 for x in v):
      _fail(f"model.{field}", v, "must be 3 positive numbers",
            '"(0.229,0.224,0.225)"')
  _positive_int(config, "model.num_classes", "80")
  _check_inference(config)


def _model_field(config, part: str, field: str) -> str | None:
  """How the config spells a part's field: "model.PART.FIELD" (nested, as
  configs/default.py) or "model.FIELD" (the flat spelling of run records
  made before the parts existed); None when it has neither."""
  for name in (f"model.{part}.{field}", f"model.{field}"):
    if _get(config, name) is not _MISSING:
      return name
  return None


def _check_inference(config) -> None:
  """model.inference: what evaluate, predict and export read, and what a
  converted run may change (a NaN or negative threshold would silently
  give no detections, a negative count a shape error after the restore)."""
  for field, kind, example, lo, hi in (
      ("score_thresh", float, "0.05", 0.0, 1.0),
      ("nms_iou", float, "0.6", 0.0, 1.0),
      ("pre_nms_topk", int, "1000", None, None),
      ("max_detections", int, "100", None, None)):
    name = _model_field(config, "inference", field)
    if name is None:
      continue
    if kind is int:
      _positive_int(config, name, example)
    else:
      _finite_number(config, name, example, lo=lo, hi=hi)


def _check_tta(config) -> None:
  if _get(config, "tta") is _MISSING:
    return
  scales = _get(config, "tta.scales")
  if scales is not _MISSING and not (
      isinstance(scales, (tuple, list)) and
      all(_is_int(s) and s > 0 for s in scales)):
    _fail("tta.scales", scales, "must be a tuple of positive short-side "
          "sizes", '"(400,500,600)"')
  _positive_int(config, "tta.max_size", "2000")


def validate(config, needs=ALL) -> None:
  """Raises ConfigError for the first bad user-set field of `config` among
  those the parts in `needs` ("train", "eval", "model") read."""
  needs = set(needs)
  unknown = needs - set(ALL)
  if unknown:
    raise ValueError(f"needs={sorted(unknown)}: expected some of {ALL}.")
  if "model" in needs:
    _check_model(config)
  if needs & {"train", "eval"}:
    _check_data(config)
  if "train" in needs:
    _check_train(config)
  if needs & {"train", "eval"}:
    _check_eval(config)
    _check_tta(config)
