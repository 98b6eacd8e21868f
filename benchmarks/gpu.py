"""GPU mode: bfloat16 FCOS-R50 against torchvision under autocast, and MFU.

Runs on a machine with one NVIDIA GPU, JAX and PyTorch, without TensorFlow
and without internet: input is synthetic and made on the device, and
TensorFlow is blocked (`block_tensorflow`) so that an import of it anywhere
on this path fails loudly instead of grabbing GPU memory.

Ours: `cfg.numerics.dtype = "bfloat16"` (bf16 convs, float32 params, loss and
post-processing). torchvision: forward under
`torch.autocast("cuda", dtype=torch.bfloat16)`, float32 master weights,
cudnn.benchmark on. Both: same architecture, batch, canvas, boxes.
`--gpu-dtype float32` runs both in float32 instead (context for the
float32 configs; the goals are judged in bf16 mode only).

MFU = the model's analytic FLOPs per call (`benchmarks.flops`: convs of
the forward, plus the kernel and input gradients that training needs; a
multiply-add is 2) / median seconds per call / the card's peak dense bf16
FLOP/s (`benchmarks.flops.PEAK_FLOPS`). XLA's own count (`cost_analysis`)
is kept in the JSON but not used: on GPUs it leaves out the convolutions,
which run as cuDNN custom calls (29 GFLOP for a 9.7 TFLOP step on an H100).
Goals: train >= 1.5x torchvision, MFU >= 15%, inference (incl. NMS) >= 1.5x
faster.

`--smoke` runs the same code on the CPU at tiny sizes (no MFU: CPUs have no
entry in the peak table).
"""

from __future__ import annotations

import os
import sys

GOALS = {"train_speedup": 1.5, "train_mfu": 0.15, "infer_speedup": 1.5}


def block_tensorflow():
  """Make `import tensorflow` raise ImportError in this process."""
  if "tensorflow" in sys.modules and sys.modules["tensorflow"] is not None:
    raise RuntimeError("TensorFlow was already imported before GPU mode.")
  sys.modules["tensorflow"] = None


def settings(smoke: bool) -> dict:
  """Sizes of one GPU run (or of the CPU smoke run)."""
  if smoke:
    # A narrow R-18: compiles fast; torchvision gets a (full-width) R-18.
    return {"canvas_hw": (64, 96), "train_batch": 2, "infer_batches": (1, 2),
            "num_boxes": 5, "repeats": 2, "warmup": 1,
            "model": {"depth": 18, "width": 8, "fpn_channels": 32,
                      "gn_groups": 8, "head_convs": 1}}
  return {"canvas_hw": (800, 1344), "train_batch": 8, "infer_batches": (1, 8),
          "num_boxes": 20, "repeats": 10, "warmup": 2, "model": {}}


def run(smoke: bool = False, dtype: str = "bfloat16") -> dict:
  """Times ours and torchvision on the GPU; returns the rows.

  dtype "bfloat16": ours bf16 vs torchvision under bf16 autocast (the goals).
  dtype "float32": both float32 as shipped, i.e. both let cuDNN run convs in
  TF32 (JAX's default precision, torch's `cudnn.allow_tf32`); no MFU, since
  the peak would depend on how much of the step ran in TF32.
  """
  if dtype not in ("bfloat16", "float32"):
    raise ValueError(f"benchmarks --gpu-dtype: {dtype!r} is not bfloat16 or "
                     "float32.")
  block_tensorflow()
  # Both frameworks share the card: JAX must not take 75% of it up front.
  os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
  # pylint: disable=import-outside-toplevel
  import jax
  import torch

  from benchmarks import bench_model, flops as flops_lib, timing
  from fcos_jax.model import config as config_lib

  s = settings(smoke)
  on_gpu = jax.default_backend() == "gpu" and torch.cuda.is_available()
  if not on_gpu and not smoke:
    raise SystemExit("benchmarks --gpu: no CUDA device for JAX and torch; "
                     "use --gpu --smoke to check the path on a CPU.")
  device = "cuda" if on_gpu else "cpu"
  if on_gpu:
    torch.backends.cudnn.benchmark = True
  cfg = config_lib.torchvision(num_classes=80, dtype=dtype, **s["model"])
  tv_cfg = config_lib.torchvision(num_classes=80,
                                  depth=s["model"].get("depth", 50))
  args = (s["canvas_hw"], s["train_batch"], s["infer_batches"], s["num_boxes"])

  ours = bench_model.Ours(cfg, *args)
  # On a CPU (smoke) torch stays float32: its bf16 autocast there is
  # emulated and takes minutes on AVX2 machines.
  autocast = torch.bfloat16 if on_gpu and dtype == "bfloat16" else None
  theirs = bench_model.Torchvision(tv_cfg, *args, device=device,
                                   autocast=autocast)
  rows = {}
  tasks = [("train", "train_once", None)] + [
      (f"infer_b{b}", "infer_once", b) for b in s["infer_batches"]]
  for name, method, arg in tasks:
    fns = {}
    for who, m in (("ours", ours), ("torchvision", theirs)):
      fn = getattr(m, method)
      fns[who] = fn if arg is None else (lambda fn=fn, a=arg: fn(a))
    if on_gpu:
      # A first call outside the peak: cudnn.benchmark's algorithm search
      # takes large scratch buffers once per shape, which are not what a
      # step needs.
      fns["torchvision"]()
      torch.cuda.empty_cache()
      torch.cuda.reset_peak_memory_stats()
    rows[name] = timing.time_interleaved(fns, s["repeats"],
                                         warmup=s["warmup"])
    if on_gpu:
      rows[name]["torchvision"]["cuda_max_allocated_bytes"] = (
          torch.cuda.max_memory_allocated())

  kind = jax.devices()[0].device_kind
  peak = (flops_lib.peak_flops(kind, "bfloat16")
          if on_gpu and dtype == "bfloat16" else None)
  per_image = {
      "train": flops_lib.analytic_train_flops(cfg, s["canvas_hw"])["total"],
      "infer": flops_lib.analytic_forward_flops(cfg, s["canvas_hw"])["total"]}
  for name, row in rows.items():
    fig = ours.figures[name]
    model_flops = per_image[name.split("_")[0]] * fig["batch"]
    row["ours"].update(compile_s=fig["compile_s"], xla_flops=fig["flops"],
                       model_flops=model_flops, xla_memory=fig["memory"])
    med = row["ours"]["s"]["median"]
    row["ours"]["model_flops_per_s"] = model_flops / med
    row["ours"]["mfu"] = model_flops / med / peak if peak else None
    row["speedup"] = row["torchvision"]["s"]["median"] / med
  stats = jax.devices()[0].memory_stats() or {}
  result = {
      "device_kind": kind, "backend": jax.default_backend(),
      "torch_device": device,
      "dtype": dtype,
      "torch_autocast": "bfloat16" if autocast is not None else None,
      "peak_bf16_flops": peak, "smoke": smoke,
      "settings": {k: list(v) if isinstance(v, tuple) else v
                   for k, v in s.items()},
      "jax_peak_bytes_in_use": stats.get("peak_bytes_in_use"),
      # Both trained the same random-init model on the same batch: a
      # finite loss of the same magnitude says both did real work.
      "last_train_loss": {"ours": ours.last_loss,
                          "torchvision": theirs.last_loss},
      "rows": rows,
      "goals": GOALS,
      "tensorflow_imported": sys.modules.get("tensorflow") is not None,
      "fcos_jax_data_imported": any(m.startswith("fcos_jax.data")
                                    for m in sys.modules),
  }
  train = rows["train"]
  infer = [rows[f"infer_b{b}"]["speedup"] for b in s["infer_batches"]]
  # The goals are set for bf16 against autocast; float32 runs are context.
  result["goals_met"] = None if dtype != "bfloat16" else {
      "train_speedup": train["speedup"] >= GOALS["train_speedup"],
      "train_mfu": (train["ours"]["mfu"] is not None and
                    train["ours"]["mfu"] >= GOALS["train_mfu"]),
      "infer_speedup": min(infer) >= GOALS["infer_speedup"],
  }
  return result


def run_family(smoke: bool = False, dtype: str = "bfloat16",
               repeats: int = 10) -> dict:
  """The family section (benchmarks/bench_family.py) on one GPU, every
  model in `dtype`; as `run`, TensorFlow blocked, and `smoke` runs the
  same code on the CPU at tiny sizes."""
  if dtype not in ("bfloat16", "float32"):
    raise ValueError(f"benchmarks --gpu-dtype: {dtype!r} is not bfloat16 or "
                     "float32.")
  block_tensorflow()
  import jax  # pylint: disable=import-outside-toplevel
  if jax.default_backend() != "gpu" and not smoke:
    raise SystemExit("benchmarks --gpu --sections family: no CUDA device for "
                     "JAX; use --smoke to check the path on a CPU.")
  from benchmarks import bench_family  # pylint: disable=import-outside-toplevel
  r = bench_family.run(smoke, repeats=repeats, dtype=dtype,
                       warmup=1 if smoke else 2)
  r["tensorflow_imported"] = sys.modules.get("tensorflow") is not None
  return r


def print_table(r: dict):
  """The GPU table: seconds per call, throughput, ratio, MFU."""
  s = r["settings"]
  print(f"GPU mode on {r['device_kind']} (jax {r['backend']}, torch "
        f"{r['torch_device']}, autocast {r['torch_autocast']}), ours {r['dtype']}, canvas {s['canvas_hw'][0]}x"
        f"{s['canvas_hw'][1]}, {s['num_boxes']} boxes, {s['repeats']} repeats"
        + (" [SMOKE: tiny sizes, not a measurement]" if r["smoke"] else ""))
  print(f"{'row':12s} {'ours ms (min/med/max)':>26s} "
        f"{'torchvision ms (min/med/max)':>30s} {'tv/ours':>8s} "
        f"{'img/s ours':>10s} {'MFU':>6s}")
  for name, row in r["rows"].items():
    o, t = row["ours"]["s"], row["torchvision"]["s"]
    b = s["train_batch"] if name == "train" else int(name.split("_b")[1])
    fmt = lambda x: f"{1e3 * x['min']:.1f}/{1e3 * x['median']:.1f}/" \
                    f"{1e3 * x['max']:.1f}"
    mfu = row["ours"]["mfu"]
    print(f"{name:12s} {fmt(o):>26s} {fmt(t):>30s} {row['speedup']:8.2f} "
          f"{b / o['median']:10.2f} "
          f"{'n/a' if mfu is None else f'{100 * mfu:.1f}%':>6s}")
  gb = lambda x: "n/a" if x is None else f"{x / 1e9:.2f}"
  for name, row in r["rows"].items():
    o = row["ours"]
    print(f"-- {name}: compile {o['compile_s']:.1f} s; model "
          f"{o['model_flops'] / 1e12:.2f} TFLOP/call, "
          f"{o['model_flops_per_s'] / 1e12:.1f} TFLOP/s; memory GB: ours XLA "
          f"peak {gb((o['xla_memory'] or {}).get('peak'))}, torchvision "
          f"max allocated {gb(row['torchvision'].get('cuda_max_allocated_bytes'))}")
  print(f"-- last train loss: {r['last_train_loss']}; jax peak bytes in use "
        f"{gb(r['jax_peak_bytes_in_use'])} GB")
  if r["goals_met"] is None:
    print(f"goals {r['goals']}: judged in bfloat16 mode only")
  else:
    print(f"goals {r['goals']}: met {r['goals_met']}")
