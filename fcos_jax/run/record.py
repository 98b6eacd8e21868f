"""The record a run keeps in its workdir: the config of every start.

WORKDIR/config.json is the config of the run that made the first
checkpoint; it is never overwritten. Every later start (a resume, maybe
with changed fields) adds config.<UTC time>.json beside it. Nothing is
written before the run's checks have passed, so a failing start leaves the
record as it was.

On resume the new config is compared with the latest record:
- the model's fields follow their part (fcos_jax/model/config.py,
  RESUME_POLICY): the architecture and quality branch must match, the
  assignment and loss may change with `allow_config_change=True`, the
  inference and numerics parts freely;
- the data and schedule fields must match, or may change with
  `allow_config_change=True` (e.g. a longer schedule);
- logging, checkpoint and evaluation fields (`FREE`) may change.
"""

from __future__ import annotations

import datetime
import json
import re

import ml_collections

from fcos_jax import storage
from fcos_jax.errors import ConfigChangeError
from fcos_jax.model.config import RESUME_POLICY, canonical_keys

FIRST = "config.json"
_LATER = re.compile(r"^config\.(\d{8}T\d{6}(?:\.\d+)?Z)\.json$")

# Run fields (outside config.model) that may change between starts without
# any flag: logging, checkpointing, evaluation, where the data is read from.
# The model's fields follow their part's policy (`model_policy`).
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
    "tta.enabled", "tta.scales", "tta.max_size", "tta.flip",
)


def model_policy(key: str) -> str:
  """"architecture", "training" or "free" for a canonical model key
  ("depth", "inference.score_thresh"): the policy of its part
  (fcos_jax.model.config.RESUME_POLICY); ModelConfig's own fields are
  architecture."""
  part = key.split(".", 1)[0] if "." in key else None
  return RESUME_POLICY.get(part, "architecture")


def _model_keys(plain: dict) -> dict:
  """{"model.<canonical key>": value} of a plain config's model section,
  flat or composed (records made before the parts existed are flat)."""
  model = plain.get("model", {})
  return {f"model.{k}": v for k, v in
          _flat(canonical_keys(model)).items()} if isinstance(model, dict) else {}


def _flat(d, prefix=""):
  out = {}
  for k, v in d.items():
    name = f"{prefix}{k}"
    if isinstance(v, dict):
      out.update(_flat(v, name + "."))
    else:
      out[name] = v
  return out


def as_plain(config) -> dict:
  """A config as JSON values (tuples as lists, inf as the string JSON gives)."""
  return json.loads(config.to_json_best_effort())


def records(workdir: str) -> list[str]:
  """Paths of the config records, oldest first."""
  d = storage.path(workdir)
  with storage.guard(workdir, "list"):  # Storage down: one line, bounded.
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
  plain = as_plain(config)
  new = _flat({k: v for k, v in plain.items() if k != "model"})
  new.update(_model_keys(plain))
  old_model = _model_keys(old)
  old = _flat({k: v for k, v in old.items() if k != "model"})
  old.update(old_model)
  allow = bool(config.get("allow_config_change", False))
  policy = lambda k: (model_policy(k[len("model."):]) if k.startswith("model.")
                      else "free" if k in FREE else "training")
  # A field only one side has comes from another version of fcos_jax (a
  # field added since); the checkpoint's shapes are checked on their own.
  changed = sorted(k for k in set(old) & set(new)
                   if old[k] != new[k] and policy(k) != "free")
  architecture = [k for k in changed if policy(k) == "architecture"]
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
