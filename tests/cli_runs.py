"""Running the real CLIs from tests: tiny-run flags, a bounded subprocess,
the parameters of a workdir's latest checkpoint (local or gs://)."""

import os
import pathlib
import subprocess
import sys
import time

import numpy as np
from tiny_run import TINY_RUN, as_flags

ROOT = pathlib.Path(__file__).resolve().parents[1]
TIMEOUT_S = 600


def tiny_args(tmp_path, steps=6, **extra):
  """Overrides that shrink configs/synthetic_cpu.py to a seconds-long run."""
  args = dict(TINY_RUN, **{
      "data.synthetic.dir": str(tmp_path.parent / "synthetic_tiny"),
      "data.num_parallel_calls": 2,
      "num_train_steps": steps,
      "checkpoint_every_steps": 2,
      "optim.warmup_steps": 2,
      "optim.decay_steps": "(4,)",
  })
  args.update(extra)
  return as_flags(args)


def command(script, workdir, args, config="configs/synthetic_cpu.py"):
  return ([sys.executable, str(ROOT / script)] +
          (["--config", str(ROOT / config)] if config else []) +
          ["--workdir", str(workdir)] + list(args))


def cli_env(devices=1, **extra):
  return dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count="
              f"{devices}", TF_CPP_MIN_LOG_LEVEL="2", **extra)


def run(script, workdir, args, check=True, env_extra=None, cwd=ROOT,
        config="configs/synthetic_cpu.py"):
  """Runs a CLI to the end (bounded in time); its CompletedProcess."""
  proc = subprocess.run(command(script, workdir, args, config), cwd=cwd,
                        env=cli_env(**(env_extra or {})), capture_output=True,
                        text=True, timeout=TIMEOUT_S)
  if check and proc.returncode != 0:
    raise AssertionError(f"{script} failed ({proc.returncode}):\n"
                         f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
  return proc


def start(script, workdir, args, log_path, env=None, cwd=ROOT):
  """Starts a CLI in the background, its output to `log_path`; the Popen.
  The caller kills it by pid (`stop`)."""
  log = open(log_path, "w")
  return subprocess.Popen(command(script, workdir, args), cwd=cwd,
                          env=env or cli_env(), stdout=log,
                          stderr=subprocess.STDOUT)


def wait_for(predicate, procs, what, timeout_s=TIMEOUT_S, poll_s=0.05):
  """Polls `predicate` until true; fails if a process ends or time runs out."""
  deadline = time.time() + timeout_s
  while not predicate():
    for p in procs:
      assert p.poll() is None, f"a process ended (rc {p.returncode}) before {what}"
    assert time.time() < deadline, f"timed out waiting for {what}"
    time.sleep(poll_s)


def stop(procs, timeout_s=60):
  """Kills our processes (by pid) if still running; their return codes."""
  for p in procs:
    if p.poll() is None:
      p.kill()
  return [p.wait(timeout=timeout_s) for p in procs]


def checkpoint_steps(workdir):
  """The finished checkpoint steps of a workdir (local or URL), sorted, as
  orbax sees them (a step still being written, or left half-written by a
  killed run, is not one)."""
  from fcos_jax import storage
  from fcos_jax.run import checkpoint
  if storage.is_url(workdir):  # Other processes wrote: drop gcsfs's listings.
    from etils.epath import backend
    backend.fsspec_backend.fs(str(workdir)).invalidate_cache()
  d = storage.join(str(workdir), "checkpoints")
  if not storage.exists(d):
    return []
  manager = checkpoint.make_manager(d, keep=1, read_only=True)
  try:
    return sorted(manager.all_steps())
  finally:
    manager.close()


def final_params(workdir):
  """The parameters of the latest checkpoint, as a flat dict of arrays."""
  import orbax.checkpoint as ocp
  from fcos_jax import storage
  step = checkpoint_steps(workdir)[-1]
  tree = ocp.StandardCheckpointer().restore(
      storage.path(storage.join(str(workdir), "checkpoints", str(step), "state")))
  flat = {}

  def visit(prefix, node):
    if isinstance(node, dict):
      for k, v in node.items():
        visit(f"{prefix}/{k}", v)
    else:
      flat[prefix] = np.asarray(node)
  visit("", tree["params"])
  return step, flat


def train_and_evaluate(tmp_path, config, quality, steps=4, train_args=()):
  """A family's synthetic config through the real commands: train.py (a
  tiny run of `steps`, which evaluates at its end) records the config with
  `quality`; evaluate.py then scores the last checkpoint into its own
  folder. Returns train.py's CompletedProcess and the recorded config."""
  import json
  workdir = tmp_path / "run"
  proc = run("train.py", workdir, tiny_args(tmp_path, steps=steps)
             + list(train_args), config=config)
  assert "Average Precision" in proc.stdout
  recorded = json.loads((workdir / "config.json").read_text())
  assert recorded["model"]["quality"]["name"] == quality

  out = tmp_path / "eval"  # Training's own eval/ files stay as written.
  evaluated = run("evaluate.py", workdir, tiny_args(tmp_path) + [
      f"--checkpoint={steps}", "--config.model.inference.score_thresh=0.0",
      f"--out={out}"], config=config)
  assert f"COCO bbox evaluation at step {steps}" in evaluated.stdout
  metrics = json.loads((out / f"metrics_step{steps}.json").read_text())
  assert metrics["num_images"] == 8 and 0 <= metrics["AP"] <= 1
  detections = json.loads((out / f"detections_step{steps}.json").read_text())
  assert detections and all(0 < d["score"] <= 1 for d in detections)
  return proc, recorded


def run_python(args, check=True):
  """`python ARGS` from the repository root (one device), bounded in time;
  its CompletedProcess, or an AssertionError with its output."""
  proc = subprocess.run([sys.executable] + list(args), cwd=ROOT,
                        env=cli_env(), capture_output=True, text=True,
                        timeout=900)
  if check and proc.returncode != 0:
    raise AssertionError(f"{list(args)[:2]} failed ({proc.returncode}):\n"
                         f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
  return proc
