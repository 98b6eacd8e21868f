"""`python -m benchmarks`: the smoke runs end to end and write the expected
JSON; the analytic FLOP count matches the spec and XLA; GPU mode never
imports TensorFlow."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
# Smoke runs test plumbing, not speed: LLVM's optimisation of the compiled
# steps is skipped, so their compiles take a fraction of the time.
SMOKE_XLA_FLAGS = (os.environ.get("XLA_FLAGS", "") +
                   " --xla_backend_optimization_level=0").strip()


def _run(tmp_path, *args):
  out = tmp_path / "bench.json"
  env = dict(os.environ, JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="",
             XLA_FLAGS=SMOKE_XLA_FLAGS)
  proc = subprocess.run(
      [sys.executable, "-m", "benchmarks", "--smoke", "--json", str(out),
       *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  return json.loads(out.read_text()), proc.stdout


def test_analytic_flops_match_the_spec():
  from benchmarks.flops import analytic_forward_flops
  from fcos_jax.model import config as config_lib
  f = analytic_forward_flops(config_lib.torchvision(), (800, 1344))
  # Spec: backbone 88, FPN 17, head 110 GMAC; 430 GFLOP in all.
  assert f["backbone"] / 2e9 == pytest.approx(88, abs=1)
  assert f["fpn"] / 2e9 == pytest.approx(17, abs=0.5)
  assert f["head"] / 2e9 == pytest.approx(110, abs=1)
  assert f["level_sizes"] == [(100, 168), (50, 84), (25, 42), (13, 21), (7, 11)]
  # caffe style puts the stride in the 1x1: its 1x1 runs on fewer pixels.
  assert analytic_forward_flops(config_lib.official(), (800, 1344))[
      "backbone"] < f["backbone"]


def test_analytic_train_flops_count_only_needed_gradients():
  """Backward = kernel gradient of each trained conv + input gradient of
  each conv with something trained below it (hand-derived cases)."""
  from benchmarks.flops import analytic_forward_flops, analytic_train_flops
  from fcos_jax.model import config as config_lib
  hw = (800, 1344)
  all_trained = config_lib.torchvision(freeze_at=0)
  fwd = analytic_forward_flops(all_trained, hw)
  stem = 2 * 400 * 672 * 7 * 7 * 3 * 64
  # Everything trained: 3x forward, less the stem's input gradient (image).
  assert analytic_train_flops(all_trained, hw)["total"] == 3 * fwd["total"] - stem
  # Whole backbone frozen: it costs its forward only, and the FPN laterals
  # need no input gradient (their inputs C3-C5 carry none).
  frozen = config_lib.torchvision(freeze_at=5)
  t = analytic_train_flops(frozen, hw)
  laterals = sum(2 * h * w * c * 256 for (h, w), c in zip(
      fwd["level_sizes"][:3], (512, 1024, 2048)))
  assert t["backbone"] == fwd["backbone"]
  assert t["fpn"] == 3 * fwd["fpn"] - laterals
  assert t["head"] == 3 * fwd["head"]
  # The default (stem + res2 frozen) lies between; about 1212 GFLOP.
  default = analytic_train_flops(config_lib.torchvision(), hw)["total"]
  assert t["total"] < default < 3 * fwd["total"] - stem
  assert default / 1e9 == pytest.approx(1212.2, abs=0.1)


def test_analytic_flops_agree_with_xla():
  """XLA's count of a narrow R-50 forward (plus norms, post-processing) is
  within a few percent of the conv count."""
  import functools

  import jax

  from benchmarks import bench_model
  from benchmarks.flops import analytic_forward_flops
  from batches import dummy_batch
  from fcos_jax.model import config as config_lib
  from fcos_jax.model.fcos import init_variables
  from fcos_jax.core.detect import eval_step
  cfg = config_lib.torchvision(num_classes=8, width=8, fpn_channels=32,
                               gn_groups=8)
  params = init_variables(cfg, jax.random.key(0))["params"]
  batch = dummy_batch(1, (96, 128), 3, 8)
  fn = jax.jit(functools.partial(eval_step, cfg=cfg))
  _, _, xla, _ = bench_model._compile(fn, params, batch)  # pylint: disable=protected-access
  analytic = analytic_forward_flops(cfg, (96, 128))["total"]
  # XLA skips the multiply-adds on zero padding (6% of them on this tiny
  # canvas, 0.7% at 800x1344); norms and post-processing add a little.
  assert 0.9 * analytic <= xla <= 1.1 * analytic


def test_peak_flops_table():
  from benchmarks.flops import peak_flops
  assert peak_flops("NVIDIA H100 80GB HBM3") == pytest.approx(989e12)
  assert peak_flops("NVIDIA H200") == pytest.approx(989e12)
  assert peak_flops("NVIDIA A100-SXM4-80GB") == pytest.approx(312e12)
  assert peak_flops("cpu") is None


@pytest.mark.torch
def test_cpu_smoke_runs_end_to_end(tmp_path):
  pytest.importorskip("torch")
  r, stdout = _run(tmp_path)
  s = r["sections"]
  assert set(s) == {"r50", "conv", "loss", "post", "input", "coco"}
  names = [row["name"] for row in s["r50"]["rows"]]
  assert names == ["r50(smoke) train", "r50(smoke) infer b1"]
  for row in s["r50"]["rows"]:
    for side in ("ours_s", "torchvision_s"):
      assert 0 < row[side]["min"] <= row[side]["median"] <= row[side]["max"]
    assert row["ratio"] > 0
  m = s["r50"]
  assert m["compile_s"]["train"] > 0 and m["compile_s"]["infer_b1"] > 0
  assert m["memory"]["train"]["ours_xla"]["peak"] > 0
  assert m["memory"]["train"]["torchvision_rss_delta"] >= 0
  f = m["flops_per_image"]
  assert f["xla_train_step"] > 2 * f["xla_forward_with_postprocess"] > 0
  # XLA's CPU count of the train step (convs and all) is the analytic one
  # give or take padding, norms, loss and optimizer.
  assert 0.85 * f["analytic_train"] <= f["xla_train_step"] <= 1.15 * f[
      "analytic_train"]
  assert set(s["conv"]["rows"]) == {
      f"{fw} {p}" for fw in ("jax", "torch")
      for p in ("fwd", "fwd+dgrad", "fwd+wgrad")} | {"jax gemm fwd+wgrad"}
  assert s["loss"]["row"]["ratio"] > 0 and s["post"]["row"]["ratio"] > 0
  assert s["input"]["images_per_s"]["median"] > 0
  assert s["coco"]["images"] == 20 and s["coco"]["max_abs_diff"] < 1e-4
  for backend in ("pycocotools", "faster_coco_eval"):
    assert s["coco"]["backends"][backend]["s"]["median"] > 0
  assert set(r["goals"]) == {"coco eval"}  # The smoke rows have other names.
  assert "-- goals" in stdout
  assert r["env"]["cores"] >= 1 and "jax" in r["env"]["versions"]
  assert "tv/ours" in stdout and "GFLOP/image" in stdout


@pytest.mark.torch
@pytest.mark.slow
def test_serving_smoke_times_onnxruntime_jit_and_torchvision(tmp_path):
  pytest.importorskip("torch")
  r, stdout = _run(tmp_path, "--sections", "serving")
  e = r["sections"]["serving"]
  assert set(e["s"]) == {"torchvision", "jitted", "onnxruntime"}
  for t in e["s"].values():
    assert 0 < t["min"] <= t["median"] <= t["max"]
  assert e["torchvision_over"]["torchvision"] == 1.0
  assert e["batch"] == 1 and e["onnx_export_s"] > 0
  assert "serve onnxruntime b1" in stdout


@pytest.mark.torch
@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_gpu_mode_smoke_runs_on_cpu_without_tensorflow(tmp_path, dtype):
  pytest.importorskip("torch")
  r, stdout = _run(tmp_path, "--gpu", "--gpu-dtype", dtype)
  assert r["mode"] == "gpu" and r["smoke"] and r["backend"] == "cpu"
  assert r["dtype"] == dtype and f"ours {dtype}" in stdout
  assert not r["tensorflow_imported"] and not r["fcos_jax_data_imported"]
  assert set(r["rows"]) == {"train", "infer_b1", "infer_b2"}
  for row in r["rows"].values():
    assert row["speedup"] > 0 and row["ours"]["model_flops"] > 0
    assert row["ours"]["model_flops_per_s"] > 0
    assert row["ours"]["mfu"] is None  # No peak FLOP/s for a CPU.
  if dtype == "bfloat16":
    assert set(r["goals_met"]) == {"train_speedup", "train_mfu",
                                   "infer_speedup"}
  else:  # The goals are judged in bf16 mode only.
    assert r["goals_met"] is None and "bfloat16 mode only" in stdout
  assert "MFU" in stdout


def test_gpu_mode_refuses_an_unknown_dtype():
  from benchmarks import gpu
  with pytest.raises(ValueError, match="'float16' is not bfloat16 or float32"):
    gpu.run(smoke=True, dtype="float16")


def test_gpu_mode_blocks_tensorflow():
  """What GPU mode imports does not pull in TensorFlow or the data package."""
  code = (
      "import sys; from benchmarks import gpu; gpu.block_tensorflow();"
      "from benchmarks import bench_model, flops, timing;"
      "import fcos_jax.train.steps;"
      "assert not any(m.startswith('fcos_jax.data') for m in sys.modules);"
      "assert sys.modules['tensorflow'] is None\n"
      "try:\n  import tensorflow\nexcept ImportError:\n  print('blocked')")
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stdout.strip() == "blocked"
