"""Two processes share one generated dataset: process 0 writes it while the
other waits (runtime.chief_first), and a later call by process 0 alone
(the evaluator's DatasetInfo) needs no barrier."""

import json
import os
import pathlib
import socket
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]

WORKER = r"""
import json, os, sys
from fcos_jax import runtime
runtime.initialize_distributed()
import jax
from fcos_jax.data import synthetic
from fcos_jax.data.config import default_data_config
from fcos_jax.data import pipeline

out = sys.argv[1]
p = jax.process_index()
real = synthetic.write_split
def write_split(*a, **k):  # Record who writes.
  open(os.path.join(out, f"wrote_{p}_{a[1]}"), "w").close()
  return real(*a, **k)
synthetic.write_split = write_split

c = default_data_config()
c.synthetic.dir = os.path.join(out, "syn")
c.synthetic.num_train, c.synthetic.num_val, c.synthetic.image_size = 6, 4, 64
c.min_size, c.max_size, c.canvases = 64, 64, ((64, 64),)
c.num_parallel_calls = 1
info = pipeline.dataset_info(c, "train")  # First use: collective.
ids = [int(i) for b in pipeline.build_eval_dataset(c, 2, p, 2)
       for i in b["image_id"][b["example_valid"]]]
if p == 0:  # Process 0 alone, as the evaluator does: must not wait.
  assert pipeline.dataset_info(c, "val").num_classes == 5
runtime.barrier("done", 60)
json.dump({"ids": ids, "classes": info.num_classes},
          open(os.path.join(out, f"result_{p}.json"), "w"))
"""


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_make_the_synthetic_set_once(tmp_path):
  port = _free_port()
  procs = []
  for i in range(2):
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
    env.update(XLA_FLAGS="--xla_force_host_platform_device_count=1",
               JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2",
               PYTHONPATH=str(ROOT), JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
               JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(i))
    procs.append(subprocess.Popen(
        [sys.executable, "-c", WORKER, str(tmp_path)], env=env, cwd=ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
  outs = []
  try:
    for p in procs:
      outs.append(p.communicate(timeout=240)[0])
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-3000:]
  assert sorted(f for f in os.listdir(tmp_path) if f.startswith("wrote")) == [
      "wrote_0_train", "wrote_0_val"]  # Only process 0 wrote.
  results = [json.load(open(tmp_path / f"result_{i}.json")) for i in range(2)]
  assert sorted(results[0]["ids"] + results[1]["ids"]) == [
      1_000_000, 1_000_001, 1_000_002, 1_000_003]
