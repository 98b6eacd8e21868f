"""The family section of `python -m benchmarks`: each row is its preset on
the main command's setting, and the smoke run times and sizes every
preset's train step."""

import json
import math
import os
import pathlib
import subprocess
import sys

import pytest

from benchmarks import bench_family
from fcos_jax.model import config as presets
from fcos_jax.model.config_dict import model_config_from

ROOT = pathlib.Path(__file__).resolve().parents[2]
# Smoke runs test plumbing, not speed: LLVM's optimisation of the compiled
# steps is skipped, so their compiles take a fraction of the time.
SMOKE_XLA_FLAGS = (os.environ.get("XLA_FLAGS", "") +
                   " --xla_backend_optimization_level=0").strip()


def test_rows_are_the_presets_on_the_main_setting():
  configs = bench_family.family_configs()
  assert list(configs) == ["official", "iou", "atss", "gfl", "p2", "vfnet",
                           "tood"]
  main = model_config_from(configs["official"].model)
  for preset, config in configs.items():
    cfg = model_config_from(config.model)
    # The main command's architecture, data and optimizer.
    for field in ("depth", "width", "fpn_channels", "head_convs",
                  "num_classes"):
      assert getattr(cfg, field) == getattr(main, field), (preset, field)
    for key in ("canvases", "max_boxes"):
      assert config.data[key] == configs["official"].data[key]
    assert config.global_batch_size == configs["official"].global_batch_size
    assert config.optim == configs["official"].optim
    # The preset's parts (P2: the preset's strides).
    ref = presets.PRESETS[preset]()
    if preset == "p2":
      assert cfg.strides == ref.strides == presets.P2_STRIDES
    else:
      assert (cfg.quality, cfg.assign.name, cfg.loss) == (
          ref.quality, ref.assign.name, ref.loss), preset
  assert bench_family.settings(False, 7) == {
      "canvases": ((256, 256),), "batch": 16, "max_boxes": 32, "repeats": 7}


def test_parameters_of_every_preset():
  """Parameters, by hand (FPN and head 32 channels, 3x3 head convs): IoU
  quality and ATSS keep FCOS's layers; GFL's box conv has 4 x 17 outputs
  instead of 4 and no centre-ness conv; P2 adds a 1x1 lateral from C2 (8
  channels), a 3x3 output conv and one Scale. (Shapes only: nothing is
  computed or compiled.)"""
  import jax
  from fcos_jax.model.fcos import init_variables
  params = {}
  for preset, config in bench_family.family_configs().items():
    cfg = model_config_from(config.model)
    shapes = jax.eval_shape(lambda key, cfg=cfg: init_variables(cfg, key),
                            jax.random.key(0))["params"]
    params[preset] = sum(math.prod(x.shape) for x in jax.tree.leaves(shapes))
  conv3 = 9 * 32 + 1  # Weights + bias of one output channel.
  base = params["official"]
  assert params["iou"] == params["atss"] == base
  assert params["gfl"] == base + (4 * 17 - 4 - 1) * conv3
  assert params["p2"] == base + (8 * 32 + 32) + 32 * conv3 + 1


@pytest.mark.slow
def test_smoke_times_and_sizes_the_family(tmp_path):
  """The section's plumbing on FCOS (the baseline) and TOOD (its step
  switches from the warm-up to TAL); every preset's train step also runs
  through train.py in tests/cli."""
  out = tmp_path / "family.json"
  env = dict(os.environ, JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="",
             XLA_FLAGS=SMOKE_XLA_FLAGS)
  proc = subprocess.run(
      [sys.executable, "-m", "benchmarks", "--smoke", "--sections", "family",
       "--family-presets", "tood", "--json", str(out)], cwd=ROOT, env=env,
      capture_output=True, text=True, timeout=1800)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  r = json.loads(out.read_text())["sections"]["family"]
  assert r["smoke"] and r["settings"]["canvases"] == [[64, 64]]
  rows = {row["preset"]: row for row in r["rows"]}
  assert list(rows) == ["official", "tood"]
  for preset, row in rows.items():
    s = row["s"]
    assert s["n"] == 2 and all(math.isfinite(v) and v > 0 for v in s["values"])
    mem = row["xla_memory"]
    assert mem["peak"] > 0 and mem["argument"] > 0 and mem["temp"] > 0
    assert math.isfinite(row["time_ratio"]) and row["time_ratio"] > 0
    assert math.isfinite(row["memory_ratio"]) and row["memory_ratio"] > 0
    assert math.isfinite(row["last_loss"]), preset  # The step did train.
    assert row["xla_flops"] > 0 and row["batch"] == 2
    assert f"   {preset} " in proc.stdout
  assert rows["official"]["time_ratio"] == rows["official"]["memory_ratio"] == 1
  assert "x mem" in proc.stdout

  proc = subprocess.run(
      [sys.executable, "-m", "benchmarks", "--smoke", "--sections", "family",
       "--family-presets", "yolo"], cwd=ROOT, env=env, capture_output=True,
      text=True, timeout=300)
  assert proc.returncode != 0 and "unknown ['yolo']" in proc.stderr


def test_gpu_mode_family_refuses_a_cpu_and_an_unknown_dtype():
  from benchmarks import gpu
  with pytest.raises(ValueError, match="'float16' is not bfloat16 or float32"):
    gpu.run_family(smoke=True, dtype="float16")
  # In a child: run_family blocks TensorFlow for the whole process.
  env = dict(os.environ, JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="")
  proc = subprocess.run(
      [sys.executable, "-c", "from benchmarks import gpu; gpu.run_family()"],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 1
  assert "no CUDA device for JAX; use --smoke" in proc.stderr
