"""Loss speed: our jitted `assign_targets + fcos_loss` against torchvision's
`FCOS.compute_loss` (matching + `FCOSHead.compute_loss`), forward only.

Both get the same batch (random boxes, `dummy_batch`) and the same random
head outputs on the same locations, with the torchvision preset (anchors at
(j*s, i*s), open size ranges, centre sampling 1.5, GIoU unweighted), so the
two losses must also agree: the table reports both. torchvision's anchors
are boxes of side s centred on our locations, as its AnchorGenerator builds
them when the canvas is a multiple of 128. Ours is timed after compilation
with `block_until_ready`; the two take turns in the timing loop, so that a
busy machine slows both alike.

A second table times the classification term alone, value and gradient of
the focal loss summed over [B, P, C] with a one-hot target: ours (as
`fcos_loss` computes it) against `optax.sigmoid_focal_loss`; the sums must
agree.

  python benchmarks/bench_loss.py            # 8 x 800x1344, 50 boxes, 80 classes
  python benchmarks/bench_loss.py --smoke    # tiny, for the test
  python benchmarks/bench_loss.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import types

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from benchmarks import timing  # noqa: E402
from tests.batches import dummy_batch  # noqa: E402
from fcos_jax.core.losses import fcos_loss, sigmoid_focal_loss  # noqa: E402
from fcos_jax.model import config as config_lib  # noqa: E402
from fcos_jax.core.locations import compute_locations  # noqa: E402
from fcos_jax.core.targets import assign_targets  # noqa: E402
from fcos_jax.model.outputs import HeadOutputs  # noqa: E402

LOSS_KEYS = ("loss_cls", "loss_reg", "loss_ctr")


def random_outputs(batch, num_locations, num_classes, seed=0):
  """Head outputs: cls_logits [B, P, C] near the prior (-4.6), box_regression
  [B, P, 4] in stride units, centerness [B, P] logits; float32."""
  rng = np.random.default_rng(seed)
  return HeadOutputs(
      cls_logits=(rng.standard_normal((batch, num_locations, num_classes),
                                      np.float32) - 4.6),
      box_regression=rng.uniform(0.1, 8.0, (batch, num_locations, 4)
                                 ).astype(np.float32),
      centerness=rng.standard_normal((batch, num_locations), np.float32))


def make_ours(locations, cfg):
  """Jitted (outputs, boxes, classes, box_valid, is_crowd) -> (total, metrics)."""

  def loss(outputs, boxes, classes, box_valid, is_crowd):
    targets = assign_targets(boxes, classes, box_valid, is_crowd, locations,
                             cfg)
    return fcos_loss(outputs, targets, locations, cfg)

  return jax.jit(loss)


def torchvision_inputs(batch, outputs, locations):
  """The same batch and outputs as torchvision's `FCOS.compute_loss` wants:
  (targets, head_outputs, anchors, num_anchors_per_level)."""
  import torch  # pylint: disable=import-outside-toplevel
  half = locations.strides[:, None] / 2
  anchors = torch.from_numpy(np.concatenate(
      [locations.points - half, locations.points + half], -1))     # [P, 4]
  targets = []
  for i in range(batch["boxes"].shape[0]):
    keep = batch["box_valid"][i] & ~batch["is_crowd"][i]
    targets.append({
        "boxes": torch.from_numpy(batch["boxes"][i][keep]),
        "labels": torch.from_numpy(batch["classes"][i][keep].astype(np.int64)),
    })
  head_outputs = {
      "cls_logits": torch.from_numpy(outputs.cls_logits),
      "bbox_regression": torch.from_numpy(outputs.box_regression),
      "bbox_ctrness": torch.from_numpy(outputs.centerness[..., None]),
  }
  per_level = [h * w for h, w in locations.level_sizes]
  return targets, head_outputs, [anchors] * len(targets), per_level


def make_torchvision(cfg):
  """torchvision's `FCOS.compute_loss`, bound to a stand-in for the model
  (it reads only `center_sampling_radius` and `head.compute_loss`)."""
  from torchvision.models.detection import fcos as tv_fcos  # pylint: disable=import-outside-toplevel
  head = tv_fcos.FCOSHead(32, 1, cfg.num_classes, num_convs=0)
  model = types.SimpleNamespace(
      center_sampling_radius=cfg.assign.center_sampling_radius, head=head)
  return lambda *args: tv_fcos.FCOS.compute_loss(model, *args)


def focal_loss_fns(alpha=0.25, gamma=2.0):
  """Jitted (logits [B, P, C], labels [B, P]) -> (sum, d sum / d logits) of
  the focal loss with one-hot targets: ours as in `fcos_loss` (all negative
  plus a correction at the true class) and optax's on the one-hot array."""

  def ours(logits, labels):
    x_true = jnp.take_along_axis(logits, labels[..., None], -1)[..., 0]
    return (jnp.sum(sigmoid_focal_loss(logits, 0.0, alpha, gamma))
            + jnp.sum(sigmoid_focal_loss(x_true, 1.0, alpha, gamma)
                      - sigmoid_focal_loss(x_true, 0.0, alpha, gamma)))

  def theirs(logits, labels):
    one_hot = jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype)
    return jnp.sum(optax.sigmoid_focal_loss(logits, one_hot, alpha=alpha,
                                            gamma=gamma))

  return {"ours": jax.jit(jax.value_and_grad(ours)),
          "optax": jax.jit(jax.value_and_grad(theirs))}


def time_focal(logits, repeats, seed=0):
  """Times both focal-loss forms; their ms and sums."""
  labels = jnp.asarray(np.random.default_rng(seed).integers(
      0, logits.shape[-1], logits.shape[:2]), jnp.int32)
  logits = jnp.asarray(logits)
  fns = focal_loss_fns()
  sums = {k: float(jax.block_until_ready(f(logits, labels))[0])
          for k, f in fns.items()}  # also compiles
  timed = timing.time_interleaved(
      {k: (lambda f=f: jax.block_until_ready(f(logits, labels)))
       for k, f in fns.items()}, repeats, warmup=0)
  return {"focal_ms": {k: _ms(timed[k]["s"]) for k in fns},
          "focal_sum": sums}


def _ms(stats):
  return {k: 1000 * stats[k] for k in ("min", "median", "max")}


def run(batch_size, canvas_hw, num_boxes, num_classes, repeats, seed=0):
  """Times both and returns the results dict (also what --json writes)."""
  import torch  # pylint: disable=import-outside-toplevel
  cfg = config_lib.torchvision(num_classes=num_classes)
  locations = compute_locations(canvas_hw, cfg)
  batch = dummy_batch(batch_size, canvas_hw, num_boxes, num_classes, seed=seed)
  outputs = random_outputs(batch_size, locations.num_locations, num_classes,
                           seed)

  ours = make_ours(locations, cfg)
  args = [jax.tree.map(jnp.asarray, outputs)] + [
      jnp.asarray(batch[k]) for k in ("boxes", "classes", "box_valid",
                                      "is_crowd")]
  start = time.perf_counter()
  total, metrics = jax.block_until_ready(ours(*args))
  compile_s = time.perf_counter() - start

  tv_loss = make_torchvision(cfg)
  tv_args = torchvision_inputs(batch, outputs, locations)
  with torch.no_grad():
    tv_out = tv_loss(*tv_args)  # warm-up
    timed = timing.time_interleaved(
        {"ours": lambda: jax.block_until_ready(ours(*args)),
         "torchvision": lambda: tv_loss(*tv_args)}, repeats, warmup=0)
  tv_losses = {k: float(tv_out[n]) for k, n in zip(
      LOSS_KEYS, ("classification", "bbox_regression", "bbox_ctrness"))}

  ours_ms, tv_ms = _ms(timed["ours"]["s"]), _ms(timed["torchvision"]["s"])
  return {
      "batch": batch_size, "canvas_hw": list(canvas_hw), "boxes": num_boxes,
      "classes": num_classes, "locations": locations.num_locations,
      "repeats": repeats, "jax_backend": jax.default_backend(),
      "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
      "compile_s": compile_s, "ours_ms": ours_ms, "torchvision_ms": tv_ms,
      "speedup_median": tv_ms["median"] / ours_ms["median"],
      "speedup_min": tv_ms["min"] / ours_ms["min"],
      "loss_ours": {k: float(metrics[k]) for k in LOSS_KEYS},
      "loss_torchvision": tv_losses,
      "num_pos": float(metrics["num_pos"]),
      **time_focal(outputs.cls_logits, repeats, seed),
  }


def print_table(r):
  print(f"FCOS loss, {r['batch']} x {r['canvas_hw'][0]}x{r['canvas_hw'][1]} "
        f"(P = {r['locations']}), {r['boxes']} boxes, {r['classes']} classes, "
        f"{r['repeats']} repeats, {r['cpu_count']} CPUs, jax on "
        f"{r['jax_backend']}, torch {r['torch_threads']} threads")
  print(f"{'':28s} {'min ms':>9s} {'median ms':>10s} {'max ms':>9s}")
  for name, key in (("ours (assign + loss, jit)", "ours_ms"),
                    ("torchvision compute_loss", "torchvision_ms")):
    s = r[key]
    print(f"{name:28s} {s['min']:9.1f} {s['median']:10.1f} {s['max']:9.1f}")
  print(f"speed-up: {r['speedup_median']:.1f}x (median), "
        f"{r['speedup_min']:.1f}x (min); our compile {r['compile_s']:.1f} s")
  print(f"{'':28s} " + " ".join(f"{k:>10s}" for k in LOSS_KEYS))
  for name, key in (("ours", "loss_ours"), ("torchvision", "loss_torchvision")):
    print(f"{name:28s} " + " ".join(f"{r[key][k]:10.5f}" for k in LOSS_KEYS))
  print(f"positives: {r['num_pos']:.0f}")
  print("\nfocal loss over [B, P, C], one-hot target, value + gradient (jit)")
  print(f"{'':28s} {'min ms':>9s} {'median ms':>10s} {'max ms':>9s} "
        f"{'sum':>12s}")
  for name, key in (("ours (fcos_loss's form)", "ours"),
                    ("optax.sigmoid_focal_loss", "optax")):
    s = r["focal_ms"][key]
    print(f"{name:28s} {s['min']:9.1f} {s['median']:10.1f} {s['max']:9.1f} "
          f"{r['focal_sum'][key]:12.4f}")


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--height", type=int, default=800)
  parser.add_argument("--width", type=int, default=1344)
  parser.add_argument("--boxes", type=int, default=50)
  parser.add_argument("--classes", type=int, default=80)
  parser.add_argument("--repeats", type=int, default=10)
  parser.add_argument("--smoke", action="store_true",
                      help="tiny sizes (2 x 128x160, 5 boxes, 4 classes)")
  parser.add_argument("--json", metavar="PATH", help="also write the results")
  args = parser.parse_args(argv)
  if args.smoke:
    args.batch, args.height, args.width = 2, 128, 160
    args.boxes, args.classes, args.repeats = 5, 4, 2
  results = run(args.batch, (args.height, args.width), args.boxes,
                args.classes, args.repeats)
  print_table(results)
  if args.json:
    with open(args.json, "w") as f:
      json.dump(results, f, indent=2)
  return results


if __name__ == "__main__":
  main()
