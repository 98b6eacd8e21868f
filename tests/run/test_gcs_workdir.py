"""train.py and evaluate.py with the workdir and the data in a Cloud Storage
bucket (the GCS emulator on loopback), as a pod user runs them:
`--workdir gs://BUCKET/run`, COCO-format data at gs:// paths, killed with
SIGKILL at random steps and resumed, then evaluated from the bucket.
"""

import json
import random
import re
import signal

import numpy as np
import pytest
from cli_runs import (checkpoint_steps, cli_env, final_params, run, start,
                      stop, tiny_args, wait_for)
from gcs_emulator import BUCKET, gcs  # noqa: F401  (the fixture)

from fcos_jax import storage

STEPS = 16


@pytest.fixture(scope="module")
def bucket_data(gcs, tmp_path_factory):  # noqa: F811
  """A tiny COCO-format dataset uploaded to gs://BUCKET/data."""
  from fcos_jax.data import synthetic
  local = tmp_path_factory.mktemp("local_data") / "synthetic"
  files = synthetic.ensure_synthetic_dataset(str(local), num_train=24,
                                             num_val=8, image_size=128)
  remote = f"gs://{BUCKET}/data"
  for path in sorted(local.rglob("*")):
    if path.is_file() and path.suffix in (".json", ".jpg") and not \
        path.name.startswith("."):
      rel = path.relative_to(local).as_posix()
      storage.write_bytes_atomic(f"{remote}/{rel}", path.read_bytes())
  assert storage.exists(f"{remote}/train.json")
  return {k: f"{remote}/{v[len(str(local)) + 1:]}" for k, v in files.items()}


def _args(tmp_path, data, **extra):
  extra.setdefault("eval_at_end", False)
  return tiny_args(tmp_path, STEPS, **{
      "data.source": "coco_format",
      "data.coco.train_json": data["train_json"],
      "data.coco.train_images": data["train_images"],
      "data.coco.val_json": data["val_json"],
      "data.coco.val_images": data["val_images"], **extra})


def _listing(url):
  """Every object and folder name under `url`, relative to it."""
  from etils.epath import backend
  fs = backend.fsspec_backend.fs(url)
  fs.invalidate_cache()
  root = url[len("gs://"):]
  names = set()
  for obj in fs.find(root):
    rel = obj[len(root) + 1:]
    parts = rel.split("/")
    names.update("/".join(parts[:i + 1]) for i in range(len(parts)))
  return sorted(names)


@pytest.mark.slow
def test_bucket_run_killed_three_times_ends_bitwise_and_evaluates(
    gcs, bucket_data, tmp_path):  # noqa: F811
  cwd = tmp_path / "cwd"  # Nothing may be written here by mistake.
  cwd.mkdir()
  env = dict(gcs)
  reference = f"gs://{BUCKET}/reference"
  run("train.py", reference, _args(tmp_path, bucket_data), cwd=cwd,
      env_extra=env)
  ref_step, ref_params = final_params(reference)
  assert ref_step == STEPS

  workdir = f"gs://{BUCKET}/run"
  args = _args(tmp_path, bucket_data)
  rng = random.Random(0)
  kills = []
  for attempt in range(3):
    done = checkpoint_steps(workdir)
    last = done[-1] if done else 0
    # A random step after the next checkpoint is finished, so each restart
    # resumes from a later one.
    kill_at = last + 2 + rng.randint(1, 3)
    log = tmp_path / f"attempt{attempt}.log"
    proc = start("train.py", workdir, args, log, env=cli_env(**env), cwd=cwd)
    try:
      wait_for(lambda: re.search(rf"\] \[{kill_at}\] ", log.read_text()) and
               checkpoint_steps(workdir)[-1:] > [last], [proc],
               f"step {kill_at} and a checkpoint after {last}", poll_s=0.2)
      proc.send_signal(signal.SIGKILL)
    finally:
      stop([proc])
    if attempt:
      assert f"at step {last}." in log.read_text()  # Resumed, not restarted.
    kills.append(kill_at)
  assert max(kills) < STEPS, kills
  last = checkpoint_steps(workdir)[-1]
  proc = run("train.py", workdir, args + ["--config.eval_at_end=True"],
             cwd=cwd, env_extra=env)
  assert f"at step {last}." in proc.stderr
  step, params = final_params(workdir)
  assert step == STEPS and params.keys() == ref_params.keys()
  for name, value in ref_params.items():
    np.testing.assert_array_equal(params[name], value, err_msg=name)

  # Evaluate from the bucket alone: the run's own config, its categories.
  proc = run("evaluate.py", workdir, [], cwd=cwd, env_extra=env, config=None)
  assert f"COCO bbox evaluation at step {STEPS}" in proc.stdout
  files = _listing(workdir)
  for name in ("config.json", "categories.json", f"eval/metrics_step{STEPS}.json",
               f"eval/detections_step{STEPS}.json", f"checkpoints/{STEPS}"):
    assert name in files, (name, files)
  assert any(f.startswith("tensorboard/events.out.tfevents") for f in files)
  metrics = json.loads(storage.read_text(
      f"{workdir}/eval/metrics_step{STEPS}.json"))
  assert metrics["num_images"] == 8
  # Resumed starts are recorded beside config.json, which stays the first.
  assert sum(f.startswith("config.") for f in files) == 1 + 3
  assert not list(cwd.iterdir()), list(cwd.iterdir())
