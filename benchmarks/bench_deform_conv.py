"""What a DCNv2 layer costs against the plain 3x3 conv it replaces, forward
and forward + backward (gradients of the input and of every parameter),
float32, jitted; torchvision.ops.deform_conv2d (with its offset conv) as
the outside reference when torch is installed.

Default sizes are where the dcnv2 models put them, at 800x1344: the res4
bottleneck 3x3 (256 -> 256 on 50x84) and the last head-tower conv
(256 -> 256 on P3, 100x168).

  python -m benchmarks.bench_deform_conv [--repeats 3]
"""

from __future__ import annotations

import argparse

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import timing
from fcos_jax.model.deform_conv import ModulatedDeformConv

SIZES = {"res4 3x3, 50x84": ((50, 84), 256), "head P3, 100x168": ((100, 168), 256)}


def _jax_fns(layer, x, rng):
  variables = layer.init(rng, x)
  if "offset" in variables["params"]:  # Offsets of a few pixels, not 0.
    off = variables["params"]["offset"]
    off["kernel"] = off["kernel"] + 0.05 * jax.random.normal(
        rng, off["kernel"].shape)
  fwd = jax.jit(layer.apply)
  loss = lambda v, x: jnp.sum(layer.apply(v, x) ** 2)
  grad = jax.jit(jax.grad(loss, argnums=(0, 1)))
  return (lambda: fwd(variables, x).block_until_ready(),
          lambda: jax.block_until_ready(grad(variables, x)))


def _torch_fns(x_nhwc, channels):
  import torch  # pylint: disable=import-outside-toplevel
  import torchvision  # pylint: disable=import-outside-toplevel
  x = torch.from_numpy(np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2)))
  x.requires_grad_(True)
  offset_conv = torch.nn.Conv2d(channels, 27, 3, 1, 1)
  weight = torch.nn.Parameter(0.01 * torch.randn(channels, channels, 3, 3))

  def dcn():
    om = offset_conv(x)
    return torchvision.ops.deform_conv2d(x, om[:, :18], weight, padding=1,
                                         mask=om[:, 18:].sigmoid())

  def fwd():
    with torch.no_grad():
      dcn()

  params = [x, weight, *offset_conv.parameters()]
  return fwd, lambda: torch.autograd.grad((dcn() ** 2).sum(), params)


def run(sizes=None, batch=1, repeats=3, with_torch=True) -> dict:
  """{size label: {row name: seconds stats}}; rows: plain / dcn (ours),
  torchvision dcn; each fwd and fwd+bwd."""
  sizes = SIZES if sizes is None else sizes
  out = {"batch": batch, "sizes": {}}
  rng = jax.random.key(0)
  for label, ((h, w), c) in sizes.items():
    x = np.random.default_rng(0).standard_normal((batch, h, w, c), np.float32)
    plain = _jax_fns(nn.Conv(c, (3, 3), padding=((1, 1), (1, 1)),
                             use_bias=False), x, rng)
    dcn = _jax_fns(ModulatedDeformConv(c), x, rng)
    fns = {"plain 3x3 fwd": plain[0], "plain 3x3 fwd+bwd": plain[1],
           "dcnv2 fwd": dcn[0], "dcnv2 fwd+bwd": dcn[1]}
    if with_torch:
      try:
        t = _torch_fns(x, c)
        fns.update({"torchvision dcnv2 fwd": t[0],
                    "torchvision dcnv2 fwd+bwd": t[1]})
      except ImportError:
        pass
    timed = timing.time_interleaved(fns, repeats, warmup=1)
    out["sizes"][label] = {name: r["s"] for name, r in timed.items()}
  return out


def print_table(r: dict):
  for label, rows in r["sizes"].items():
    base = {k: rows[f"plain 3x3 {k}"]["median"] for k in ("fwd", "fwd+bwd")}
    print(f"-- DCNv2 vs plain 3x3 conv, {label}, batch {r['batch']}, float32")
    for name, s in rows.items():
      kind = "fwd+bwd" if name.endswith("fwd+bwd") else "fwd"
      print(f"   {name:28s} {1e3 * s['median']:9.1f} ms  "
            f"{s['median'] / base[kind]:5.1f}x plain")


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--repeats", type=int, default=3)
  args = p.parse_args(argv)
  print_table(run(repeats=args.repeats))


if __name__ == "__main__":
  main()
