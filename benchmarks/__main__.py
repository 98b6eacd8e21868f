"""Where we stand: one table against torchvision's FCOS and the hardware.

  python -m benchmarks                   # CPU: R-50 800x1344 + small config
  python -m benchmarks --json out.json   # also write every figure
  python -m benchmarks --smoke           # tiny sizes, end to end (tests)
  python -m benchmarks --gpu [--smoke]   # bf16 on one NVIDIA GPU, MFU
  python -m benchmarks --gpu --gpu-dtype float32   # both sides float32
  python -m benchmarks --sections family [--smoke] [--gpu]   # the family

Sections (CPU mode; see BENCHMARKS.md for what each figure includes):
  r50    our train/eval steps vs torchvision's FCOS-R50-FPN, float32,
         800x1344: throughput, latency, memory, compile time, FLOPs.
  small  the synthetic CPU config (configs/synthetic_cpu.py): ours only,
         torchvision has no model of that shape. Not run with --smoke
         (same code as r50; one compile less).
  conv   benchmarks/bench_conv.py: one 3x3 conv fwd / dgrad / wgrad in
         JAX and torch (why the CPU train step is where it is).
  loss   benchmarks/bench_loss.py (assignment + loss vs compute_loss).
  post   benchmarks/bench_postprocess.py (vs postprocess_detections).
  input  benchmarks/bench_input.py (tf.data pipeline, images/s).
  coco   benchmarks/bench_coco_eval.py (pycocotools and faster-coco-eval
         on 5,000 images x 100 detections, taking turns).
  dcn    benchmarks/bench_deform_conv.py: DCNv2 against the plain 3x3
         conv it replaces (and torchvision's deform_conv2d), fwd and
         fwd+bwd, at the res4 and head-P3 sizes of 800x1344. Not run
         unless named in --sections.
  zoo    benchmarks/bench_zoo.py: forward cost (parameters, analytic and
         XLA GFLOP, CPU s per image) of R-50, X-101-64x4d, MNV2 and
         dcnv2-R-50 FCOS at 800x1344. Not run unless named in --sections.
  predict, export (not run unless named in --sections):
         benchmarks/bench_predict.py: predict.py's path on JPEG files
         (images/s), and the exported StableHLO / SavedModel / ONNX
         against the jitted model (latency ratio), on the small config.
  serving benchmarks/bench_predict.py: CPU serving of R-50 at 800x1344,
         batch 1, NMS included: our ONNX export in ONNX Runtime, our jitted
         model and torchvision's FCOS, taking turns in one process. Not
         run unless named in --sections.
  family benchmarks/bench_family.py: the train step (ms/step, XLA memory,
         parameters, ratios to FCOS) of each preset of the family
         (official, iou, atss, gfl, p2) on the main command's setting
         (configs/synthetic_cpu.py: 256x256, batch 16). Not run unless
         named in --sections; with --gpu, `--sections family` runs it on
         the GPU (numerics --gpu-dtype) instead of the R-50 comparison.
Every figure: min / median / max over repeats after warm-up; ratio =
torchvision median / our median (> 1: we are faster).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

SECTIONS = ("r50", "small", "conv", "loss", "post", "input", "coco",
            "predict", "export", "dcn", "zoo", "family", "serving")
DEFAULT_SECTIONS = ("r50", "small", "conv", "loss", "post", "input", "coco")


def environment() -> dict:
  """CPU, cores, load and software versions (without importing TF)."""
  cpu = "unknown"
  try:
    with open("/proc/cpuinfo") as f:
      cpu = next(l.split(":", 1)[1].strip() for l in f
                 if l.startswith("model name"))
  except (OSError, StopIteration):
    pass
  versions = {}
  for pkg in ("jax", "jaxlib", "flax", "optax", "numpy", "torch",
              "torchvision", "tensorflow-cpu", "tensorflow", "pycocotools",
              "faster-coco-eval"):
    try:
      versions[pkg] = importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
      pass
  return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
          "load_avg_start": os.getloadavg(), "versions": versions}


def _row(name, batch, ours, theirs=None):
  """A timing row: seconds-per-call stats of each side, images per call."""
  row = {"name": name, "batch": batch, "ours_s": ours, "torchvision_s": theirs}
  row["ratio"] = (theirs["median"] / ours["median"]) if theirs else None
  return row


def model_section(label, cfg, canvas_hw, train_batch, infer_batches,
                  num_boxes, repeats, with_torchvision):
  """Timings, compile, memory and FLOPs of one model (see bench_model)."""
  from benchmarks import bench_model, flops  # pylint: disable=import-outside-toplevel
  ours = bench_model.Ours(cfg, canvas_hw, train_batch, infer_batches,
                          num_boxes)
  theirs = (bench_model.Torchvision(cfg, canvas_hw, train_batch,
                                    infer_batches, num_boxes)
            if with_torchvision else None)
  timed = bench_model.time_models(ours, theirs, repeats, infer_batches)
  rows, memory = [], {}
  for task, res in timed.items():
    batch = ours.figures[task]["batch"]
    tv = res.get("torchvision")
    rows.append(_row(f"{label} {task.replace('_b', ' b')}", batch,
                     res["ours"]["s"], tv["s"] if tv else None))
    memory[task] = {"ours_xla": ours.figures[task]["memory"],
                    "ours_rss_delta": res["ours"]["rss_delta_bytes"],
                    "torchvision_rss_delta": tv["rss_delta_bytes"] if tv else None}
  analytic = flops.analytic_forward_flops(cfg, canvas_hw)
  analytic_train = flops.analytic_train_flops(cfg, canvas_hw)["total"]
  fwd_xla = ours.figures[f"infer_b{infer_batches[0]}"]["flops"]
  train_xla = ours.figures["train"]["flops"]
  return {
      "label": label, "canvas_hw": list(canvas_hw), "num_boxes": num_boxes,
      "repeats": repeats, "rows": rows, "memory": memory,
      "compile_s": {t: f["compile_s"] for t, f in ours.figures.items()},
      "flops_per_image": {
          "analytic_forward": analytic["total"],
          "analytic_parts": {k: analytic[k] for k in ("backbone", "fpn", "head")},
          "analytic_train": analytic_train,
          "xla_forward_with_postprocess": fwd_xla / infer_batches[0] if fwd_xla else None,
          "xla_train_step": train_xla / train_batch if train_xla else None},
  }


def small_config():
  """The model of configs/synthetic_cpu.py at its 256x256 canvas."""
  from fcos_jax.configs import synthetic_cpu  # pylint: disable=import-outside-toplevel
  from fcos_jax.model.config_dict import model_config_from  # pylint: disable=import-outside-toplevel
  config = synthetic_cpu.get_config()
  return model_config_from(config.model), tuple(config.data.canvases[0])


def loss_section(smoke, repeats):
  from benchmarks import bench_loss  # pylint: disable=import-outside-toplevel
  args = (2, (128, 160), 5, 4) if smoke else (2, (800, 1344), 50, 80)
  r = bench_loss.run(*args, repeats=repeats)
  to_s = lambda d: {k: d[k] / 1e3 for k in ("min", "median", "max")}
  r["row"] = _row(f"loss {args[0]}x{args[1][0]}x{args[1][1]}", args[0],
                  to_s(r["ours_ms"]), to_s(r["torchvision_ms"]))
  return r


def post_section(smoke, repeats):
  from benchmarks import bench_postprocess, timing  # pylint: disable=import-outside-toplevel
  with tempfile.TemporaryDirectory() as d:
    path = os.path.join(d, "post.json")
    argv = ["--smoke"] if smoke else ["--batch", "2", "--repeats", str(repeats)]
    bench_postprocess.main(argv + ["--json", path])
    with open(path) as f:
      r = json.load(f)
  b = r["args"]["batch"]
  r["row"] = _row(f"postprocess {b}x{r['args']['height']}x{r['args']['width']}",
                  b, timing.stats(r["ours_s"]), timing.stats(r["torchvision_s"]))
  return r


def input_section(smoke, repeats):
  """bench_input, `repeats` times (each builds its pipeline and warms up)."""
  from benchmarks import bench_input, timing  # pylint: disable=import-outside-toplevel
  argv = ["--smoke"] if smoke else ["--images", "32", "--steps", "6",
                                    "--batch", "4"]
  runs = [bench_input.main(argv) for _ in range(repeats)]
  ips = [r["images_per_s"] for r in runs]
  return {"runs": runs, "images_per_s": timing.stats(ips),
          "canvas": runs[0]["canvas"], "batch": runs[0]["batch"]}


def coco_section(smoke, repeats):
  from benchmarks import bench_coco_eval  # pylint: disable=import-outside-toplevel
  return bench_coco_eval.run(20 if smoke else 5000, repeats)


def run_cpu(args) -> dict:
  """Every CPU section that is asked for; returns the JSON dict."""
  result = {"mode": "cpu", "smoke": args.smoke, "env": environment(),
            "sections": {}}
  sections = result["sections"]
  from fcos_jax.model import config as config_lib  # pylint: disable=import-outside-toplevel
  if "r50" in args.sections:
    if args.smoke:  # Same code, a narrow R-18 (fast to compile), tiny canvas.
      cfg = config_lib.torchvision(num_classes=80, depth=18, width=8,
                                   fpn_channels=32, gn_groups=8, head_convs=1)
      sections["r50"] = model_section("r50(smoke)", cfg, (64, 96), 2, (1,),
                                      5, 2, True)
    else:
      cfg = config_lib.torchvision(num_classes=80)
      sections["r50"] = model_section(
          "r50", cfg, (800, 1344), args.r50_train_batch,
          tuple(args.r50_infer_batches), 20, args.r50_repeats, True)
  if "small" in args.sections and not args.smoke:
    cfg, canvas = small_config()
    sections["small"] = model_section("small", cfg, canvas, 16, (1, 16), 10,
                                      args.repeats, False)
  reps = 2 if args.smoke else args.repeats
  if "conv" in args.sections:
    from benchmarks import bench_conv  # pylint: disable=import-outside-toplevel
    sections["conv"] = (bench_conv.run((16, 24), 32, repeats=2) if args.smoke
                        else bench_conv.run(repeats=3))
  if "loss" in args.sections:
    sections["loss"] = loss_section(args.smoke, reps)
  if "post" in args.sections:
    sections["post"] = post_section(args.smoke, reps)
  if "input" in args.sections:
    sections["input"] = input_section(args.smoke, 2 if args.smoke else 3)
  if "coco" in args.sections:
    sections["coco"] = coco_section(args.smoke, 2 if args.smoke else 1)
  if "dcn" in args.sections:
    from benchmarks import bench_deform_conv  # pylint: disable=import-outside-toplevel
    sections["dcn"] = (bench_deform_conv.run(
        {"smoke 16x24": ((16, 24), 16)}, repeats=2) if args.smoke
                       else bench_deform_conv.run(repeats=args.repeats))
  if "zoo" in args.sections:
    from benchmarks import bench_zoo  # pylint: disable=import-outside-toplevel
    sections["zoo"] = bench_zoo.run(args.smoke, repeats=args.zoo_repeats)
  if "family" in args.sections:
    from benchmarks import bench_family  # pylint: disable=import-outside-toplevel
    sections["family"] = bench_family.run(args.smoke, repeats=args.repeats,
                                          presets=args.family_presets)
  if "predict" in args.sections:
    from benchmarks import bench_predict  # pylint: disable=import-outside-toplevel
    sections["predict"] = bench_predict.predict_files(args.smoke)
  if "export" in args.sections:
    from benchmarks import bench_predict  # pylint: disable=import-outside-toplevel
    sections["export"] = bench_predict.exported_latency(
        args.smoke, repeats=3 * args.repeats)
  if "serving" in args.sections:
    from benchmarks import bench_predict  # pylint: disable=import-outside-toplevel
    sections["serving"] = bench_predict.cpu_serving(args.smoke)
  result["env"]["load_avg_end"] = os.getloadavg()
  return result


def _fmt_s(s):
  if s is None:
    return f"{'n/a':>29s}"
  return " ".join(f"{1e3 * s[k]:9.1f}" for k in ("min", "median", "max"))


def _gb(b):
  return "n/a" if b is None else f"{b / 2**30:.2f}"


def print_cpu_table(r: dict):
  """The one table (then compile, memory and FLOPs lines)."""
  env = r["env"]
  v = env["versions"]
  print(f"\n== FCOS benchmarks on {env['cpu']} ({env['cores']} cores), "
        f"load {env['load_avg_start'][0]:.1f} -> {env['load_avg_end'][0]:.1f}"
        f"; jax {v.get('jax')}, flax {v.get('flax')}, torch {v.get('torch')}, "
        f"torchvision {v.get('torchvision')}"
        + (" [SMOKE: tiny sizes, not a measurement]" if r["smoke"] else ""))
  print(f"{'row (ms per call)':26s} {'ours min/med/max':>29s} "
        f"{'torchvision min/med/max':>29s} {'tv/ours':>8s} {'img/s':>8s}")
  s = r["sections"]
  rows = []
  for key in ("r50", "small"):
    if key in s:
      rows += s[key]["rows"]
  for key in ("loss", "post"):
    if key in s:
      rows.append(s[key]["row"])
  for row in rows:
    ratio = "" if row["ratio"] is None else f"{row['ratio']:.2f}"
    ips = row["batch"] / row["ours_s"]["median"]
    print(f"{row['name']:26s} {_fmt_s(row['ours_s'])} "
          f"{_fmt_s(row['torchvision_s'])} {ratio:>8s} {ips:8.3g}")
  if "input" in s:
    i = s["input"]["images_per_s"]
    print(f"{'input pipeline (img/s)':26s} {i['min']:9.1f} {i['median']:9.1f} "
          f"{i['max']:9.1f}  (canvas {s['input']['canvas']}, batch "
          f"{s['input']['batch']})")
  if "coco" in s:
    c = s["coco"]
    b = c["backends"]
    print(f"{'COCO eval ' + str(c['images']) + ' imgs (ms)':26s} "
          f"{_fmt_s(b['faster_coco_eval']['s'])} "
          f"{_fmt_s(b['pycocotools']['s'])} {c['speedup']:8.2f}"
          f"  (faster-coco-eval | pycocotools; {c['detections']} detections,"
          f" 12 numbers differ by {c['max_abs_diff']:.1e})")
  if "predict" in s:
    i, pr = s["predict"]["images_per_s"], s["predict"]
    print(f"{'predict on files (img/s)':26s} {i['min']:9.1f} {i['median']:9.1f} "
          f"{i['max']:9.1f}  ({pr['images']} JPEGs {pr['image_hw'][0]}x"
          f"{pr['image_hw'][1]}, canvas {pr['canvas']}, batch {pr['batch']})")
  if "export" in s:
    e = s["export"]
    for name, t in e["s"].items():
      print(f"{'export ' + name + ' b' + str(e['batch']):26s} {_fmt_s(t)} "
            f" x{e['ratio_to_jitted'][name]:.2f} of jitted")
  if "serving" in s:
    e = s["serving"]
    for name, t in e["s"].items():
      print(f"{'serve ' + name + ' b1':26s} {_fmt_s(t)} "
            f" torchvision / this x{e['torchvision_over'][name]:.2f} "
            f"({e['canvas'][0]}x{e['canvas'][1]}, NMS included)")
  if "conv" in s:
    c = s["conv"]
    print(f"-- one 3x3 conv {c['channels']}->{c['channels']} at "
          f"{c['hw'][0]}x{c['hw'][1]} (ms median, GFLOP/s): " + ", ".join(
              f"{n} {1e3 * r['s']['median']:.0f} ({r['gflop_per_s']:.0f})"
              for n, r in c["rows"].items()))
  if "dcn" in s:
    from benchmarks import bench_deform_conv  # pylint: disable=import-outside-toplevel
    bench_deform_conv.print_table(s["dcn"])
  if "zoo" in s:
    from benchmarks import bench_zoo  # pylint: disable=import-outside-toplevel
    bench_zoo.print_table(s["zoo"])
  if "family" in s:
    from benchmarks import bench_family  # pylint: disable=import-outside-toplevel
    bench_family.print_table(s["family"])
  for key in ("r50", "small"):
    if key not in s:
      continue
    m = s[key]
    print(f"-- {m['label']}: compile s " + ", ".join(
        f"{t} {c:.1f}" for t, c in m["compile_s"].items()))
    for task, mem in m["memory"].items():
      xla = mem["ours_xla"]
      print(f"   memory {task}: ours XLA peak {_gb(xla and xla['peak'])} GB "
            f"(temp {_gb(xla and xla['temp'])}), ours RSS delta "
            f"{_gb(mem['ours_rss_delta'])} GB, torchvision RSS delta "
            f"{_gb(mem['torchvision_rss_delta'])} GB")
    f = m["flops_per_image"]
    g = lambda x: "n/a" if x is None else f"{x / 1e9:.1f}"
    parts = ", ".join(f"{k} {g(x)}" for k, x in f["analytic_parts"].items())
    print(f"   GFLOP/image: analytic forward {g(f['analytic_forward'])} "
          f"({parts}); XLA forward+post {g(f['xla_forward_with_postprocess'])};"
          f" analytic train {g(f['analytic_train'])};"
          f" XLA train step {g(f['xla_train_step'])}")


# The CPU goals of the speed issue: torchvision median / ours, and
# pycocotools / faster-coco-eval for the COCO evaluation.
CPU_GOALS = {"r50 train": 1.0, "r50 infer b1": 1.2, "coco eval": 5.0}


def cpu_goals(r: dict) -> dict:
  """goal name -> (measured ratio, goal, met) for what was run."""
  s = r["sections"]
  measured = {row["name"]: row["ratio"] for key in ("r50",) if key in s
              for row in s[key]["rows"]}
  if "coco" in s:
    measured["coco eval"] = s["coco"]["speedup"]
  return {name: (measured[name], goal, measured[name] >= goal)
          for name, goal in CPU_GOALS.items() if measured.get(name)}


def print_cpu_goals(r: dict):
  goals = cpu_goals(r)
  if goals:
    print("-- goals (ratio >= goal): " + "; ".join(
        f"{n} {m:.2f}x vs {g}x {'met' if ok else 'MISSED'}"
        for n, (m, g, ok) in goals.items()))


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--smoke", action="store_true", help="Tiny sizes, quick.")
  p.add_argument("--gpu", action="store_true",
                 help="bf16 on one NVIDIA GPU vs torchvision autocast; no TF.")
  p.add_argument("--gpu-dtype", default="bfloat16",
                 choices=("bfloat16", "float32"),
                 help="GPU mode: bf16 vs autocast (default, the goals), or "
                      "float32 on both sides (convs in TF32 on both).")
  p.add_argument("--json", metavar="PATH", help="Also write all figures.")
  p.add_argument("--sections", nargs="+", default=list(DEFAULT_SECTIONS),
                 choices=SECTIONS,
                 help="Sections to run (CPU mode); with --gpu, only "
                      "`family` is heeded (on the GPU instead of the R-50 "
                      "comparison).")
  p.add_argument("--repeats", type=int, default=10,
                 help="Timed repeats of the small and family rows.")
  p.add_argument("--family-presets", nargs="+", metavar="PRESET",
                 help="The family section's rows (default: every preset; "
                      "FCOS, the baseline of the ratios, always runs).")
  p.add_argument("--r50-repeats", type=int, default=3)
  p.add_argument("--zoo-repeats", type=int, default=2)
  p.add_argument("--r50-train-batch", type=int, default=1)
  p.add_argument("--r50-infer-batches", type=int, nargs="+", default=[1])
  args = p.parse_args(argv)
  start = time.perf_counter()
  if args.smoke:
    # Plumbing only: one torch thread keeps torch from spinning against
    # XLA's threads on a busy machine (that made smoke runs take minutes).
    import torch  # pylint: disable=import-outside-toplevel
    torch.set_num_threads(1)
  if args.gpu and "family" in args.sections:
    from benchmarks import gpu  # pylint: disable=import-outside-toplevel
    result = {"mode": "gpu", "smoke": args.smoke, "env": environment(),
              "sections": {"family": gpu.run_family(
                  args.smoke, args.gpu_dtype, args.repeats)}}
    from benchmarks import bench_family  # pylint: disable=import-outside-toplevel
    bench_family.print_table(result["sections"]["family"])
  elif args.gpu:
    from benchmarks import gpu  # pylint: disable=import-outside-toplevel
    result = gpu.run(smoke=args.smoke, dtype=args.gpu_dtype)
    result["mode"] = "gpu"
    gpu.print_table(result)
  else:
    result = run_cpu(args)
    print_cpu_table(result)
    print_cpu_goals(result)
    result["goals"] = cpu_goals(result)
  result["wall_s"] = time.perf_counter() - start
  print(f"total {result['wall_s']:.0f} s")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(result, f, indent=1, default=float)
  return result


if __name__ == "__main__":
  sys.exit(0 if main() else 1)
