"""Why a train step costs what it does: one 3x3 conv (the head's 256 -> 256
on P3 of an 800x1344 image by default) in JAX and in PyTorch, forward,
gradient with respect to the input (dgrad) and to the kernel (wgrad),
float32, achieved GFLOP/s; and the kernel gradient as one GEMM per tap
(`fcos_jax.train.cpu_conv`, what training uses on the CPU). Each of the
three costs the same FLOPs, so the backward should take about twice the
forward.

  python -m benchmarks.bench_conv [--hw 100 168] [--channels 256]
"""

from __future__ import annotations

import argparse
import json

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import timing
from fcos_jax.train import cpu_conv


def run(hw=(100, 168), channels=256, batch=1, repeats=5) -> dict:
  """Seconds per call of fwd / dgrad / wgrad in JAX (NHWC, jit) and torch
  (NCHW); the FLOPs of one of them is 2 * B * H * W * 9 * C * C."""
  import torch  # pylint: disable=import-outside-toplevel
  h, w = hw
  rng = np.random.default_rng(0)
  x = rng.standard_normal((batch, h, w, channels), np.float32)
  k = rng.standard_normal((3, 3, channels, channels), np.float32) * 0.01
  conv = lambda x, k: jax.lax.conv_general_dilated(
      x, k, (1, 1), ((1, 1), (1, 1)),
      dimension_numbers=("NHWC", "HWIO", "NHWC"))
  loss = lambda x, k: jnp.sum(conv(x, k) ** 2)
  jx, jk = jnp.asarray(x), jnp.asarray(k)
  j_fwd = jax.jit(conv)
  j_dgrad = jax.jit(jax.grad(loss, argnums=0))
  j_wgrad = jax.jit(jax.grad(loss, argnums=1))
  # The kernel gradient as one GEMM per tap (what training uses on the
  # CPU for wide convs: ModelConfig.conv_kernel_grad, cpu_conv.py).
  gemm_conv = lambda x, k: cpu_conv.conv_general_dilated(
      x, k, (1, 1), ((1, 1), (1, 1)),
      dimension_numbers=("NHWC", "HWIO", "NHWC"), any_width=True)
  j_gemm_wgrad = jax.jit(jax.grad(lambda x, k: jnp.sum(gemm_conv(x, k) ** 2),
                                  argnums=1))

  tx = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).requires_grad_(True)
  tk = torch.from_numpy(k.transpose(3, 2, 0, 1).copy()).requires_grad_(True)
  t_conv = lambda: torch.nn.functional.conv2d(tx, tk, padding=1)

  def t_grad(wrt):
    return lambda: torch.autograd.grad((t_conv() ** 2).sum(), wrt)

  def t_fwd():
    with torch.no_grad():
      t_conv()

  fns = {
      "jax fwd": lambda: j_fwd(jx, jk).block_until_ready(),
      "torch fwd": t_fwd,
      # The grads include their forward: subtract the fwd time to compare.
      "jax fwd+dgrad": lambda: j_dgrad(jx, jk).block_until_ready(),
      "torch fwd+dgrad": t_grad(tx),
      "jax fwd+wgrad": lambda: j_wgrad(jx, jk).block_until_ready(),
      "torch fwd+wgrad": t_grad(tk),
      "jax gemm fwd+wgrad": lambda: j_gemm_wgrad(jx, jk).block_until_ready(),
  }
  timed = timing.time_interleaved(fns, repeats, warmup=1)
  flops = 2 * batch * h * w * 9 * channels * channels
  out = {"hw": list(hw), "channels": channels, "batch": batch,
         "flops_per_conv": flops, "rows": {}}
  for name, r in timed.items():
    med = r["s"]["median"]
    convs = 1 if name.endswith("fwd") else 2
    out["rows"][name] = {"s": r["s"], "gflop_per_s": convs * flops / med / 1e9}
  return out


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--hw", type=int, nargs=2, default=(100, 168))
  p.add_argument("--channels", type=int, default=256)
  p.add_argument("--repeats", type=int, default=5)
  args = p.parse_args(argv)
  r = run(tuple(args.hw), args.channels, repeats=args.repeats)
  for name, row in r["rows"].items():
    print(f"{name:18s} {1e3 * row['s']['median']:9.1f} ms "
          f"{row['gflop_per_s']:7.1f} GFLOP/s")
  print(json.dumps({"flops_per_conv": r["flops_per_conv"]}))
  return r


if __name__ == "__main__":
  main()
