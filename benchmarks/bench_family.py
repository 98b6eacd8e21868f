"""The FCOS family side by side: the train step of each model preset on the
main command's setting, in one run.

Each row is a config of the family (configs/synthetic_*_cpu.py): the main
command's model (configs/synthetic_cpu.py: narrow GroupNorm ResNet-18, FPN
32, head 2 convs), canvas(es), global batch, max boxes and optimizer, with
only the preset's parts changed, exactly as `train.py --config` builds it:

  official  FCOS imprv (configs/synthetic_cpu.py itself)
  iou       IoU quality branch (configs/synthetic_iou_cpu.py)
  atss      ATSS assignment and loss (configs/synthetic_atss_cpu.py)
  gfl       GFL: joint quality + QFL, DFL, ATSS (configs/synthetic_gfl_cpu.py)
  p2        the main model with a P2 level (configs/synthetic_p2_cpu.py)
  vfnet     VFNet: star deformable refinement, VFL, ATSS
            (configs/synthetic_vfnet_cpu.py)
  tood      TOOD: T-head, TAL after an ATSS warm-up
            (configs/synthetic_tood_cpu.py; timed after its warm-up)

Per row: parameters; the train step of `benchmarks.bench_model.Ours`
(`fcos_jax.train.steps.train_step` with the config's optimizer, state
donated, AOT-compiled), seconds per step min / median / max over `repeats`
after one warm-up, the presets taking turns (`timing.time_interleaved`);
XLA's memory analysis of the compiled step (arguments + outputs +
temporaries - donated/aliased buffers: the device memory one step needs,
as the r50 and small sections report it); XLA's FLOPs of the step; and the
time and memory as ratios to FCOS's (`official`) on the same canvas.

  python -m benchmarks --sections family            # CPU, float32
  python -m benchmarks --sections family --smoke    # 64x64, batch 2
  python -m benchmarks --gpu --sections family      # one GPU, bf16
"""

from __future__ import annotations

import importlib

import jax
import numpy as np

from benchmarks import bench_model, timing
from fcos_jax import runtime
from fcos_jax.model.config_dict import model_config_from

# preset -> the config module (fcos_jax/configs) that puts it on the main
# command's setting.
FAMILY = {"official": "synthetic_cpu", "iou": "synthetic_iou_cpu",
          "atss": "synthetic_atss_cpu", "gfl": "synthetic_gfl_cpu",
          "p2": "synthetic_p2_cpu", "vfnet": "synthetic_vfnet_cpu",
          "tood": "synthetic_tood_cpu"}
BASELINE = "official"

# --smoke: the same models on a tiny canvas and batch. Their five train
# steps take minutes to compile on a busy 2-core machine whatever the
# canvas, so a smoke run takes its compiles from the CLIs' persistent
# cache (the configs' `compilation_cache_dir`): plumbing only, and its
# compile times are not figures. A measurement (no --smoke) compiles cold.
SMOKE = {"canvases": ((64, 64),), "batch": 2, "max_boxes": 5, "repeats": 2}


def family_configs() -> dict:
  """preset -> the ml_collections config of its row (see FAMILY). TOOD's
  row is timed after its warm-up (TAL, QFL): the step that most of its
  training runs (the warm-up's ATSS step is lighter)."""
  configs = {preset: importlib.import_module(
      f"fcos_jax.configs.{module}").get_config()
             for preset, module in FAMILY.items()}
  configs["tood"].model.assign.initial_steps = 0
  return configs


def settings(smoke: bool, repeats: int) -> dict:
  """Canvases, global batch, padded boxes and repeats of the run: the main
  command's (configs/synthetic_cpu.py), or SMOKE's."""
  if smoke:
    return dict(SMOKE)
  main = family_configs()[BASELINE]
  return {"canvases": tuple(tuple(c) for c in main.data.canvases),
          "batch": main.global_batch_size, "max_boxes": main.data.max_boxes,
          "repeats": repeats}


def run(smoke: bool = False, repeats: int = 10, dtype: str | None = None,
        warmup: int = 1, presets=None) -> dict:
  """Builds, compiles and times every preset's train step; returns the rows.

  dtype: None keeps the configs' numerics (float32); "bfloat16" or
  "float32" sets `numerics.dtype` of every model (GPU mode).
  presets: the rows to run (None: all); the baseline always runs.
  """
  s = settings(smoke, repeats)
  configs = family_configs()
  if presets:
    unknown = sorted(set(presets) - set(configs))
    if unknown:
      raise SystemExit(f"--family-presets: unknown {unknown}; choose among "
                       f"{list(configs)}.")
    configs = {p: c for p, c in configs.items()
               if p == BASELINE or p in presets}
  if smoke:
    runtime.enable_compilation_cache(configs[BASELINE].compilation_cache_dir)
  rows = []
  for canvas in s["canvases"]:
    models = {}
    for preset, config in configs.items():
      cfg = model_config_from(config.model)
      if dtype is not None:
        cfg = cfg.replace(dtype=dtype)
      models[preset] = bench_model.Ours(
          cfg, canvas, s["batch"], (), s["max_boxes"], optim=config.optim)
    timed = timing.time_interleaved(
        {p: m.train_once for p, m in models.items()}, s["repeats"],
        warmup=warmup, memory=jax.default_backend() == "cpu")
    for preset, m in models.items():
      fig = m.figures["train"]
      rows.append({
          "preset": preset, "config": f"configs/{FAMILY[preset]}.py",
          "canvas_hw": list(canvas), "batch": s["batch"],
          "params": int(sum(np.size(x) for x in jax.tree.leaves(m.params))),
          "s": timed[preset]["s"],
          "rss_delta_bytes": timed[preset].get("rss_delta_bytes"),
          "xla_memory": fig["memory"], "xla_flops": fig["flops"],
          "compile_s": fig["compile_s"], "last_loss": m.last_loss})
    base = next(r for r in rows if r["preset"] == BASELINE
                and r["canvas_hw"] == list(canvas))
    for r in rows:
      if r["canvas_hw"] != list(canvas):
        continue
      r["time_ratio"] = r["s"]["median"] / base["s"]["median"]
      peak, base_peak = ((x["xla_memory"] or {}).get("peak")
                         for x in (r, base))
      r["memory_ratio"] = peak / base_peak if peak and base_peak else None
    del models
  return {"smoke": smoke, "backend": jax.default_backend(),
          "device_kind": jax.devices()[0].device_kind,
          "dtype": dtype or "float32 (configs)", "baseline": BASELINE,
          "settings": {**s, "canvases": [list(c) for c in s["canvases"]]},
          "rows": rows}


def print_table(r: dict):
  s = r["settings"]
  print(f"-- family train step on {r['device_kind']} ({r['backend']}, "
        f"{r['dtype']}): batch {s['batch']}, {s['max_boxes']} padded boxes, "
        f"{s['repeats']} repeats; memory = XLA arguments + outputs + "
        f"temporaries - donated; ratios to {r['baseline']}"
        + (" [SMOKE: tiny sizes, not a measurement]" if r["smoke"] else ""))
  print(f"   {'preset':9s} {'canvas':>9s} {'params':>9s} "
        f"{'ms/step min/med/max':>26s} {'x time':>7s} {'img/s':>7s} "
        f"{'XLA MB':>8s} {'x mem':>6s} {'temp MB':>8s} {'GFLOP/step':>10s}")
  mb = lambda b: "n/a" if b is None else f"{b / 2**20:.1f}"
  for row in r["rows"]:
    t, mem = row["s"], row["xla_memory"] or {}
    ms = f"{1e3 * t['min']:.1f}/{1e3 * t['median']:.1f}/{1e3 * t['max']:.1f}"
    ratio = lambda x: "n/a" if x is None else f"{x:.2f}"
    gflop = "n/a" if row["xla_flops"] is None else f"{row['xla_flops'] / 1e9:.1f}"
    canvas = "x".join(str(v) for v in row["canvas_hw"])
    print(f"   {row['preset']:9s} {canvas:>9s} {row['params']:9,d} {ms:>26s} "
          f"{ratio(row['time_ratio']):>7s} "
          f"{row['batch'] / t['median']:7.1f} {mb(mem.get('peak')):>8s} "
          f"{ratio(row['memory_ratio']):>6s} {mb(mem.get('temp')):>8s} "
          f"{gflop:>10s}")
