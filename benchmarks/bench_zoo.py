"""Forward cost of the model-zoo backbones side by side: R-50, X-101-64x4d,
MobileNetV2 and dcnv2-R-50 FCOS (the official architectures, 80 classes,
FPN 256) on one 800x1344 image, float32 on the CPU.

Per model: parameters; analytic GFLOP of the convolutions (benchmarks/
flops.py, from the architecture; a deformable conv counts its conv and its
offset conv, not its bilinear sampling), by part; XLA's GFLOP of the
compiled forward (`cost_analysis`; it counts every op, the sampling of the
deformable convs included); compile time; and seconds per forward
(network only: normalised image in, per-level outputs flattened, no
post-processing), min / median / max over `repeats` after one warm-up,
the models taking turns.

  python -m benchmarks --sections zoo          # 800x1344, 2 repeats
  python -m benchmarks --sections zoo --smoke  # tiny widths and canvas
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import flops, timing
from fcos_jax.model import config as config_lib
from fcos_jax.model.fcos import FCOS, init_variables


def zoo_models(smoke: bool = False) -> dict:
  """name -> ModelConfig of the compared models (the official layouts)."""
  small = dict(width=16, fpn_channels=32, gn_groups=8, head_convs=1,
               num_classes=5) if smoke else dict(num_classes=80)
  # Smoke: the ResNeXt row at depth 50 (101 layers take long to compile).
  x101 = dict(depth=101, groups=64, width_per_group=4) if not smoke else dict(
      depth=50, groups=4, width_per_group=16)
  mnv2 = {k: v for k, v in small.items() if k != "width"}
  return {
      "R-50": config_lib.official(**small),
      "X-101-64x4d": config_lib.official(stride_in_1x1=False, **x101,
                                         **small),
      "MNV2": config_lib.official(backbone="mobilenet_v2", bn_eps=1e-5,
                                  freeze_at=0, **mnv2),
      "dcnv2-R-50": config_lib.official(dcn_stages=(3, 4, 5), head_dcn=True,
                                        **small),
  }


def random_variables(cfg, seed=0):
  """Variables of `FCOS(cfg)` with random values and positive BN variances,
  made in NumPy from the shapes (no initialiser program to compile: the
  cost of a forward does not depend on the values)."""
  shapes = jax.eval_shape(lambda r: init_variables(cfg, r), jax.random.key(0))
  rng = np.random.default_rng(seed)

  def fill(path, s):
    if path[-1].key in ("var", "scale"):
      return jnp.asarray(rng.uniform(0.5, 1.5, s.shape).astype(np.float32))
    return jnp.asarray(0.05 * rng.standard_normal(s.shape).astype(np.float32))
  return jax.tree_util.tree_map_with_path(fill, shapes)


def _xla_flops(compiled):
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  return float(cost["flops"]) if cost and "flops" in cost else None


def run(smoke: bool = False, canvas_hw=(800, 1344), repeats: int = 2) -> dict:
  if smoke:
    canvas_hw = (64, 96)
  images = jnp.asarray(np.random.default_rng(0).normal(
      size=(1, *canvas_hw, 3)).astype(np.float32))
  calls, rows = {}, {}
  for name, cfg in zoo_models(smoke).items():
    variables = random_variables(cfg)
    start = time.perf_counter()
    compiled = jax.jit(FCOS(cfg).apply).lower(variables, images).compile()
    compile_s = time.perf_counter() - start
    analytic = flops.analytic_forward_flops(cfg, canvas_hw)
    rows[name] = {
        "params": int(sum(np.size(x) for x in jax.tree.leaves(
            variables["params"]))),
        "analytic_gflop": analytic["total"] / 1e9,
        "analytic_parts_gflop": {k: analytic[k] / 1e9
                                 for k in ("backbone", "fpn", "head")},
        "xla_gflop": (lambda f: f and f / 1e9)(_xla_flops(compiled)),
        "compile_s": compile_s}
    calls[name] = (lambda c=compiled, v=variables: jax.block_until_ready(
        c(v, images)))
  timed = timing.time_interleaved(calls, repeats)
  for name, t in timed.items():
    rows[name]["s"] = t["s"]
  return {"canvas_hw": list(canvas_hw), "repeats": repeats, "rows": rows}


def print_table(r: dict):
  h, w = r["canvas_hw"]
  print(f"-- zoo forward, 1 image {h}x{w}, float32 (network only; s per "
        f"image min/med/max over {r['repeats']}):")
  print(f"   {'model':12s} {'params M':>9s} {'GFLOP analytic':>15s} "
        f"{'(bb/fpn/head)':>19s} {'GFLOP XLA':>10s} {'compile s':>10s} "
        f"{'s/image min/med/max':>22s}")
  for name, row in r["rows"].items():
    p = row["analytic_parts_gflop"]
    parts = f"{p['backbone']:.0f}/{p['fpn']:.0f}/{p['head']:.0f}"
    xla = "n/a" if row["xla_gflop"] is None else f"{row['xla_gflop']:.1f}"
    s = row["s"]
    print(f"   {name:12s} {row['params'] / 1e6:9.1f} "
          f"{row['analytic_gflop']:15.1f} {parts:>19s} {xla:>10s} "
          f"{row['compile_s']:10.1f} {s['min']:7.2f} {s['median']:7.2f} "
          f"{s['max']:7.2f}")
