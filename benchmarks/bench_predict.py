"""The product path: predict.py's work on image files, and the exported
artifacts against the jitted model.

predict: N JPEG files of the synthetic shapes set -> `load_prepared` (read,
  decode, EXIF, resize onto the canvas; 4 threads) -> `Predictor.stream`
  (model + NMS, batched) -> COCO results records -> detections.json. The
  model is configs/synthetic_cpu.py's (random weights, so every image has
  the full 100 detections), after one warm-up pass that compiles. Figure:
  images per second of the whole pass.
export: one batch on the same canvas through the jitted serving function,
  the deserialized `jax.export` StableHLO (`jax.jit(exported.call)`), the
  TF SavedModel (`signatures["serving_default"]`, inputs from NumPy, outputs
  to NumPy) and the ONNX model (onnxruntime CPU session),
  taking turns in blocks of 5 consecutive calls (TF's and XLA's thread
  pools each pay for the other's spinning right after a switch; a served
  artifact runs call after call); ratio = artifact median / jitted median
  (< 1.1 is the goal).

  python -m benchmarks --sections predict export
  python benchmarks/bench_predict.py --smoke
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import timing  # noqa: E402


def _model(smoke: bool):
  """(cfg, params, image size, min_size, max_size, canvas)."""
  from fcos_jax.model import config as config_lib
  from fcos_jax.model.fcos import init_variables
  if smoke:
    cfg = config_lib.official(num_classes=3, depth=18, width=8, freeze_at=0,
                              backbone_norm="gn", fpn_channels=32,
                              head_convs=1, gn_groups=8, score_thresh=0.001)
    size, canvas = (60, 90), (64, 96)
  else:
    from benchmarks.__main__ import small_config
    cfg, canvas = small_config()
    cfg = cfg.replace(score_thresh=0.001)
    size = canvas
  params = init_variables(cfg, jax.random.key(0))["params"]
  return cfg, params, size, min(canvas), max(canvas), canvas


def _write_jpegs(directory, n, hw, seed=0):
  from PIL import Image
  from fcos_jax.data import synthetic
  rng = np.random.default_rng(seed)
  paths = []
  for i in range(n):
    p = os.path.join(directory, f"{i:05d}.jpg")
    Image.fromarray(synthetic.make_image(rng, *hw)[0]).save(p, quality=90)
    paths.append(p)
  return paths


def predict_files(smoke: bool = False, images: int = 64, batch: int = 16,
                  repeats: int = 3) -> dict:
  from fcos_jax import storage
  from fcos_jax.inference.detector import Detector
  cfg, params, size, lo, hi, canvas = _model(smoke)
  if smoke:
    images, batch, repeats = 8, 4, 2
  categories = [{"id": i, "name": f"class{i}"} for i in range(cfg.num_classes)]
  det = Detector(cfg, params, categories, min_size=lo, max_size=hi,
                 canvases=(canvas,), batch_size=batch)
  with tempfile.TemporaryDirectory() as d:
    paths = _write_jpegs(d, images, size)

    def one_pass():
      start = time.perf_counter()
      records = []
      for i, (_, r) in enumerate(det.predict_files(paths)):
        records += det.to_coco([r], [i])
      storage.write_json_atomic(os.path.join(d, "detections.json"), records)
      return time.perf_counter() - start, len(records)

    one_pass()  # Compiles.
    runs = [one_pass() for _ in range(repeats)]
  ips = [images / s for s, _ in runs]
  return {"images": images, "image_hw": list(size), "canvas": list(canvas),
          "batch": batch, "detections": runs[0][1],
          "images_per_s": timing.stats(ips)}


def exported_latency(smoke: bool = False, batch: int = 1,
                     repeats: int = 10, block: int = 5) -> dict:
  from fcos_jax.export import onnx_export, saved_model, serving, stablehlo
  cfg, params, _, _, _, canvas = _model(smoke)
  if smoke:
    repeats = 2
  params = serving.as_numpy_params(params)
  rng = np.random.default_rng(0)
  args = (rng.integers(0, 255, (batch, *canvas, 3), dtype=np.uint8),
          np.tile(np.asarray(canvas, np.int32), (batch, 1)),
          np.tile(np.asarray(canvas, np.int32), (batch, 1)))
  jitted = jax.jit(serving.serving_function(cfg, params))
  with tempfile.TemporaryDirectory() as d:
    path = os.path.join(d, "m.jax_export")
    stablehlo.save(stablehlo.export(cfg, params, canvas), path)
    exported = jax.jit(stablehlo.load(path).call)
    sm_path = os.path.join(d, "sm")
    saved_model.export(cfg, params, canvas, sm_path, batch=batch)
    sm = saved_model.load(sm_path)
    fns = {
        "jitted": lambda: jax.block_until_ready(jitted(*args)),
        "stablehlo": lambda: jax.block_until_ready(exported(*args)),
        "saved_model": lambda: sm(*args),  # Returns NumPy: blocks.
    }
    onnx_path = os.path.join(d, "m.onnx")
    onnx_export.export(cfg, params, canvas, onnx_path, batch=batch)
    fns["onnx"] = functools.partial(onnx_export.load(onnx_path), *args)
    timed = timing.time_interleaved(fns, repeats, warmup=2, block=block)
  out = {"batch": batch, "canvas": list(canvas), "s": {}}
  for name, res in timed.items():
    out["s"][name] = res["s"]
  base = out["s"]["jitted"]["median"]
  out["ratio_to_jitted"] = {k: v["median"] / base for k, v in out["s"].items()}
  return out


def cpu_serving(smoke: bool = False, repeats: int = 5, block: int = 1) -> dict:
  """R-50 FCOS (torchvision's preset, random weights, 80 classes) at
  800x1344, batch 1, NMS included, in one process taking turns: our ONNX
  export in ONNX Runtime, our jitted serving function, and torchvision's
  FCOS (eval, inference_mode, its own resize of a 800x1344 image).
  Ratio = torchvision median / the row's median (> 1: faster than
  torchvision)."""
  import torch  # pylint: disable=import-outside-toplevel
  from benchmarks.bench_model import build_torchvision_fcos
  from fcos_jax.export import onnx_export, serving
  from fcos_jax.model import config as config_lib
  from fcos_jax.model.fcos import init_variables
  if smoke:
    cfg = config_lib.torchvision(num_classes=80, depth=18, width=8,
                                 fpn_channels=32, gn_groups=8, head_convs=1)
    canvas, repeats = (64, 96), 2
  else:
    cfg, canvas = config_lib.torchvision(num_classes=80), (800, 1344)
  params = serving.as_numpy_params(
      init_variables(cfg, jax.random.key(0))["params"])
  rng = np.random.default_rng(0)
  image = rng.integers(0, 255, (1, *canvas, 3), dtype=np.uint8)
  hw = np.asarray([canvas], np.int32)
  jitted = jax.jit(serving.serving_function(cfg, params))
  torch.manual_seed(0)
  tv = build_torchvision_fcos(cfg, canvas).eval()
  tv_image = [torch.from_numpy(image[0]).permute(2, 0, 1).float() / 255]

  def torchvision_once():
    with torch.inference_mode():
      return tv(tv_image)

  with tempfile.TemporaryDirectory() as d:
    path = os.path.join(d, "r50.onnx")
    t0 = time.perf_counter()
    onnx_export.export(cfg, params, canvas, path, batch=1)
    export_s = time.perf_counter() - t0
    fns = {"torchvision": torchvision_once,
           "jitted": lambda: jax.block_until_ready(jitted(image, hw, hw)),
           "onnxruntime": functools.partial(onnx_export.load(path), image, hw,
                                            hw)}
    timed = timing.time_interleaved(fns, repeats, warmup=1, block=block)
  out = {"canvas": list(canvas), "batch": 1, "torch_threads":
         torch.get_num_threads(), "onnx_export_s": export_s, "s": {}}
  for name, res in timed.items():
    out["s"][name] = res["s"]
  base = out["s"]["torchvision"]["median"]
  out["torchvision_over"] = {k: base / v["median"]
                             for k, v in out["s"].items()}
  return out


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--smoke", action="store_true")
  p.add_argument("--json", metavar="PATH")
  args = p.parse_args(argv)
  r = {"predict": predict_files(args.smoke),
       "export": exported_latency(args.smoke)}
  print(json.dumps({"predict_images_per_s": r["predict"]["images_per_s"][
      "median"], "export_ratio": r["export"]["ratio_to_jitted"]}, indent=1))
  if args.json:
    with open(args.json, "w") as f:
      json.dump(r, f, indent=1, default=float)
  return r


if __name__ == "__main__":
  main()
