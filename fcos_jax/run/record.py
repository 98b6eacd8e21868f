"""The record a run keeps in its workdir: the config of every start.

WORKDIR/config.json is the config of the run that made the first
checkpoint; it is never overwritten. Every later start (a resume, maybe
with changed fields) adds config.<UTC time>.json beside it. Nothing is
written before the run's checks have passed, so a failing start leaves the
record as it was.

On resume the new config is compared with the latest record:
- model fields that shape the parameters or the training targets, and the
  data and schedule fields, must match (a difference is an error naming the
  field, the old and the new value);
- `allow_config_change=True` accepts differences in the data and schedule
  fields (e.g. a longer schedule), never in the model's architecture;
- logging, checkpoint, evaluation and inference-only fields may change.
"""

from __future__ import annotations

import datetime
import json
import re

import ml_collections

from fcos_jax import storage
from fcos_jax.errors import ConfigChangeError

FIRST = "config.json"
_LATER = re.compile(r"^config\.(\d{8}T\d{6}(?:\.\d+)?Z)\.json$")

# Fields that may change between starts without any flag.
FREE = (
    "log_every_steps", "checkpoint_every_steps", "keep_checkpoints",
    "keep_best_checkpoints", "best_checkpoint_metric", "async_checkpointing",
    "eval_every_steps", "eval_at_end", "eval_batch_size", "eval_backend",
    "compilation_cache_dir", "allow_config_change", "stop_check_every_steps",
    "profile_steps", "profile_first_step", "init_backbone",
    "init_backbone_format",
    "distributed.initialization_timeout_s", "distributed.heartbeat_timeout_s",
    "distributed.shutdown_timeout_s",
    "data.num_parallel_calls", "data.prefetch", "data.private_threadpool_size",
    "data.skip_bad_examples", "data.coco.val_json", "data.coco.val_images",
    "data.tfds.val_split", "data.tfds.val_gt_json", "data.tfds.export_dir",
    "data.tfds.data_dir",
    # Inference only: they do not touch the parameters or the training.
    "model.score_thresh", "model.score_thresh_on", "model.pre_nms_topk",
    "model.nms_iou", "model.max_detections", "model.dtype",
    # How the kernel gradients are computed (same values to rounding).
    "model.conv_kernel_grad",
)
# Model fields that only training reads (targets and loss): changeable with
# allow_config_change like the schedule. Every other model field shapes the
# parameters or what they compute and can never change on resume.
TRAINING_ONLY_MODEL = (
    "model.size_ranges", "model.size_range_inclusive",
    "model.center_sampling_radius", "model.focal_alpha", "model.focal_gamma",
    "model.reg_loss", "model.reg_weighting", "model.iou_smooth",
)


def _flat(d, prefix=""):
  out = {}
  for k, v in d.items():
    name = f"{prefix}{k}"
    if isinstance(v, dict):
      out.update(_flat(v, name + "."))
    else:
      out[name] = v
  return out


def _as_plain(config) -> dict:
  """A config as JSON values (tuples as lists, inf as the string JSON gives)."""
  return json.loads(config.to_json_best_effort())


def records(workdir: str) -> list[str]:
  """Paths of the config records, oldest first."""
  d = storage.path(workdir)
  if not d.exists():
    return []
  later = sorted(p.name for p in d.iterdir() if _LATER.match(p.name))
  first = [FIRST] if (d / FIRST).exists() else []
  return [storage.join(workdir, n) for n in first + later]


def read_latest(workdir: str) -> dict | None:
  """The latest record as a plain dict, or None."""
  paths = records(workdir)
  return storage.read_json(paths[-1]) if paths else None


def read_config(workdir: str) -> ml_collections.ConfigDict | None:
  """The latest record as a ConfigDict (for evaluation and prediction)."""
  latest = read_latest(workdir)
  return None if latest is None else ml_collections.ConfigDict(latest)


def write(workdir: str, config) -> str:
  """Adds this start's config to the record; returns the path written."""
  text = config.to_json_best_effort(indent=2)
  if not storage.exists(storage.join(workdir, FIRST)):
    name = FIRST
  else:
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime(
        "%Y%m%dT%H%M%S.%fZ")
    name = f"config.{stamp}.json"
  path = storage.join(workdir, name)
  storage.write_text_atomic(path, text)
  return path


def check_resume(old: dict, config, record_path: str) -> list[str]:
  """Compares the new `config` with the record `old`.

  Returns the fields changed with allow_config_change (to log); raises
  ConfigChangeError naming every field that may not change.
  """
  new = _flat(_as_plain(config))
  old = _flat(old)
  allow = bool(config.get("allow_config_change", False))
  # A field only one side has comes from another version of fcos_jax (a
  # field added since); the checkpoint's shapes are checked on their own.
  changed = sorted(k for k in set(old) & set(new)
                   if old[k] != new[k] and k not in FREE)
  architecture = [k for k in changed if k.startswith("model.")
                  and k not in TRAINING_ONLY_MODEL]
  guarded = [k for k in changed if k not in architecture]
  show = lambda ks: "; ".join(
      f"{k}: {old.get(k, '<absent>')!r} -> {new.get(k, '<absent>')!r}"
      for k in ks)
  if architecture:
    raise ConfigChangeError(
        f"The checkpoints in this workdir were made with another model "
        f"({record_path}): {show(architecture)}. These fields shape the "
        "parameters and cannot change on resume: use the recorded values, or "
        "another --workdir for a new run.")
  if guarded and not allow:
    raise ConfigChangeError(
        f"Resuming with a changed config ({record_path} has the one the "
        f"checkpoints were made with): {show(guarded)}. These fields change "
        "the data or the schedule: use the recorded values, or pass "
        "--config.allow_config_change=True to continue with the new ones.")
  return [show([k]) for k in guarded]
