"""Export round trips: each artifact, loaded fresh, gives the jitted model's
detections on real (decoded, resized) images; and the export CLI."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from fcos_jax.data import synthetic
from fcos_jax.export import saved_model, serving, stablehlo
from fcos_jax.inference import images as images_lib
from fcos_jax.model.fcos import init_variables
from tiny_run import tiny_model

ROOT = pathlib.Path(__file__).resolve().parents[2]
CFG = tiny_model(num_classes=3)
CANVASES = ((64, 96), (96, 64))
BATCH = 2


@pytest.fixture(scope="module")
def params():
  return serving.as_numpy_params(
      init_variables(CFG, jax.random.key(1))["params"])


def raw_images(canvas_index, seed=0):
  """Synthetic shapes images of two sizes that go to canvas `canvas_index`,
  encoded as JPEG and decoded the way predict.py does it."""
  import io
  from PIL import Image
  rng = np.random.default_rng(seed)
  sizes = ((120, 170), (100, 130)) if canvas_index == 0 else ((170, 120),
                                                              (90, 60))
  out = []
  for h, w in sizes:
    buf = io.BytesIO()
    Image.fromarray(synthetic.make_image(rng, h, w)[0]).save(buf, "JPEG",
                                                             quality=90)
    out.append(images_lib.decode(buf.getvalue()))
  return out


def prepare(images, canvas_index):
  """predict.py's resize onto the canvas: the three model inputs."""
  resizer = images_lib.Resizer(64, 96, CANVASES)
  batch = {"images": [], "image_hw": [], "orig_hw": []}
  for image in images:
    index, canvas, image_hw = resizer(image)
    assert index == canvas_index
    batch["images"].append(canvas)
    batch["image_hw"].append(image_hw)
    batch["orig_hw"].append(image.shape[:2])
  return (np.stack(batch["images"]), np.asarray(batch["image_hw"], np.int32),
          np.asarray(batch["orig_hw"], np.int32))


def inputs(canvas_index, seed=0):
  return prepare(raw_images(canvas_index, seed), canvas_index)


def reference(cfg, params, args):
  return jax.device_get(jax.jit(serving.serving_function(cfg, params))(*args))


def assert_matching_detections(got, want, box_tol, score_tol, at_least):
  """Order-free: every image keeps its number of detections, and `at_least`
  of them have a twin (same class, box and score within the tolerances) on
  the other side. For bfloat16 (programs compiled apart round differently,
  and an untrained model's scores are near ties) and ONNX's NMS (ties)."""
  got = {k: np.asarray(v) for k, v in got.items()}
  np.testing.assert_array_equal(got["valid"].sum(1), want["valid"].sum(1))
  matched = total = 0
  for b in range(len(want["valid"])):
    n = int(want["valid"][b].sum())
    for k in range(n):
      ok = ((got["classes"][b, :n] == want["classes"][b, k]) &
            (np.abs(got["scores"][b, :n] - want["scores"][b, k]) <= score_tol)
            & (np.abs(got["boxes"][b, :n] - want["boxes"][b, k]).max(-1)
               <= box_tol))
      matched += bool(ok.any())
      total += 1
  assert matched >= at_least * total, (matched, total)
  return matched, total


def assert_same_detections(got, want, box_tol=1e-3, score_tol=1e-5):
  got = {k: np.asarray(v) for k, v in got.items()}
  np.testing.assert_array_equal(got["valid"], want["valid"])
  assert want["valid"].sum() >= 10 * BATCH
  np.testing.assert_array_equal(got["classes"], want["classes"])
  np.testing.assert_allclose(got["boxes"], want["boxes"], rtol=0, atol=box_tol)
  np.testing.assert_allclose(got["scores"], want["scores"], rtol=0,
                             atol=score_tol)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_stablehlo_round_trip(tmp_path, params, dtype):
  cfg = CFG.replace(dtype=dtype)
  for i, canvas in enumerate(CANVASES):
    path = str(tmp_path / f"{i}.jax_export")
    stablehlo.save(stablehlo.export(cfg, params, canvas,
                                    platforms=("cpu", "cuda", "tpu")), path)
    exported = stablehlo.load(path)  # Nothing of our model code is used.
    assert exported.platforms == ("cpu", "cuda", "tpu")
    args = inputs(i, seed=i)
    want = reference(cfg, params, args)
    check = assert_same_detections if dtype == "float32" else (
        lambda g, w: assert_matching_detections(g, w, 0.5, 2e-3, 0.9))
    check(jax.device_get(exported.call(*args)), want)
    # Any batch size: one image alone gives its own detections.
    one = jax.device_get(exported.call(*(a[:1] for a in args)))
    check({k: np.concatenate([v, want[k][1:]]) for k, v in one.items()},
          want)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_saved_model_round_trip(tmp_path, params, dtype):
  cfg = CFG.replace(dtype=dtype)
  canvas = CANVASES[0]
  path = str(tmp_path / "sm")
  saved_model.export(cfg, params, canvas, path, batch=BATCH)
  args = inputs(0)
  got = saved_model.load(path)(*args)  # A fresh tf.saved_model.load.
  # TF's XLA compiles the same StableHLO; bfloat16 rounds differently.
  want = reference(cfg, params, args)
  if dtype == "float32":
    assert_same_detections(got, want)
  else:
    assert_matching_detections(got, want, 0.5, 2e-3, 0.9)


@pytest.mark.slow
def test_saved_model_of_any_size_image(tmp_path, params):
  """The image SavedModel resizes inside (the same TF ops as predict.py),
  picks the canvas by the bucket rule and gives the jitted model's
  detections on images of both orientations; an image no canvas holds is
  refused with a message that names the canvases."""
  path = str(tmp_path / "sm_images")
  saved_model.export_images(CFG, params, CANVASES, path, min_size=64,
                            max_size=96)
  run = saved_model.load_images(path)  # A fresh tf.saved_model.load.
  for i in range(len(CANVASES)):
    images = raw_images(i, seed=7 + i)
    want = reference(CFG, params, prepare(images, i))
    got = [run(image) for image in images]
    assert_same_detections({k: np.stack([g[k] for g in got]) for k in want},
                           want)
  # A portrait image against a landscape canvas alone: refused by name.
  path = str(tmp_path / "sm_landscape")
  saved_model.export_images(CFG, params, CANVASES[:1], path, min_size=64,
                            max_size=96)
  with pytest.raises(Exception, match="fits none of the exported canvases "
                     "64x96"):
    saved_model.load_images(path)(raw_images(1)[0])


def test_onnx_round_trip(tmp_path):
  """Model + candidates from jax2onnx, NMS from ONNX's NonMaxSuppression
  (see fcos_jax/export/onnx_export.py for what differs): the same
  detections, up to the order of equal scores."""
  pytest.importorskip("onnxruntime")
  pytest.importorskip("jax2onnx")
  from fcos_jax.export import onnx_export
  # A small top-k, so that postprocess takes its fast path (behind a
  # lax.cond) as on real canvases; frozen BatchNorm and stages
  # (stop_gradient), as the pretrained presets have.
  cfg = CFG.replace(pre_nms_topk=20, freeze_at=2, backbone_norm="frozen_bn")
  params = serving.as_numpy_params(
      init_variables(cfg, jax.random.key(2))["params"])
  # Canvas 0 one image at a time; canvas 1 as one batch, with more
  # detection slots (320) than candidates x classes (3 x 49), so the
  # graph pads its top-K.
  for i, (canvas, batch, max_dets) in enumerate(
      [(CANVASES[0], 1, 100), (CANVASES[1], BATCH, 320)]):
    cfg_i = cfg.replace(max_detections=max_dets)
    path = str(tmp_path / f"{i}.onnx")
    onnx_export.export(cfg_i, params, canvas, path, batch=batch)
    run = onnx_export.load(path)  # A fresh onnxruntime.InferenceSession.
    args = inputs(i, seed=5 + i)
    for b in range(0, BATCH, batch):
      part = tuple(a[b:b + batch] for a in args)
      want = reference(cfg_i, params, part)
      got = run(*part)
      assert got["boxes"].shape == (batch, max_dets, 4)
      assert want["valid"].sum() >= 10 * batch
      # Every detection has its twin (class, box within 1e-3 px, score
      # within 1e-5); equal scores may come in another order.
      assert_matching_detections(got, want, 1e-3, 1e-5, 1.0)
      np.testing.assert_allclose(got["scores"], want["scores"], rtol=0,
                                 atol=1e-5)


@pytest.mark.slow
def test_export_cli_writes_every_artifact_and_a_manifest(tmp_path, params):
  import ml_collections
  from fcos_jax.run import categories as categories_lib
  from fcos_jax.inference.detector import Detector
  from fcos_jax.run import checkpoint, record
  from fcos_jax.model.config_dict import model_config_dict
  sys.path.insert(0, str(ROOT))
  from fcos_jax.configs import synthetic_cpu
  config = synthetic_cpu.get_config()
  config.model = model_config_dict(CFG)
  config.data.min_size, config.data.max_size = 64, 96
  config.data.canvases = CANVASES
  config.compilation_cache_dir = ""
  workdir = tmp_path / "run"
  record.write(str(workdir), config)
  cats = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}, {"id": 5, "name": "c"}]
  (workdir / categories_lib.FILE).write_text(json.dumps({"categories": cats}))
  manager = checkpoint.make_manager(str(workdir / "checkpoints"), keep=1,
                                    async_save=False)
  checkpoint.save(manager, 7, {"params": params, "step": 7}, {"step": 7})
  manager.wait_until_finished()
  manager.close()

  out = tmp_path / "export"
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1",
             TF_CPP_MIN_LOG_LEVEL="2")
  proc = subprocess.run(
      [sys.executable, "-m", "fcos_jax.cli.export", f"--workdir={workdir}",
       f"--out={out}", "--dtypes=float32", f"--batch={BATCH}",
       "--formats=stablehlo,saved_model"], cwd=ROOT,
      env=env, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-5000:]
  manifest = json.loads((out / "manifest.json").read_text())
  assert manifest["step"] == 7 and manifest["categories"] == cats
  assert manifest["resize"]["canvases"] == [list(c) for c in CANVASES]
  per_canvas = [f for f in manifest["files"] if isinstance(f["canvas"], list)]
  assert sorted((f["format"], tuple(f["canvas"])) for f in per_canvas
                ) == sorted((f, c) for f in ("saved_model", "stablehlo")
                            for c in CANVASES)
  [any_size] = [f for f in manifest["files"] if f not in per_canvas]
  assert any_size["format"] == "saved_model"
  # The artifact gives the Detector's detections (original pixels).
  det = Detector.from_workdir(str(workdir), config=ml_collections.ConfigDict(
      json.loads((workdir / "config.json").read_text())))
  args = inputs(1, seed=3)
  path = [f["path"] for f in manifest["files"]
          if f["format"] == "stablehlo" and tuple(f["canvas"]) == (96, 64)][0]
  got = jax.device_get(stablehlo.load(path).call(*args))
  from fcos_jax.inference.predictor import Prepared
  items = [Prepared(i, 1, args[0][i], tuple(args[1][i]), tuple(args[2][i]))
           for i in range(BATCH)]
  for i, r in enumerate(det.predictor.run_batch(items)):
    n = len(r["scores"])
    assert got["valid"][i].sum() == n
    np.testing.assert_allclose(got["boxes"][i][:n], r["boxes"], atol=1e-3)
    np.testing.assert_allclose(got["scores"][i][:n], r["scores"], atol=1e-5)
    np.testing.assert_array_equal(got["classes"][i][:n], r["labels"])
  # The any-size SavedModel on raw pixels equals the Python API's call.
  run = saved_model.load_images(any_size["path"])
  image = raw_images(1, seed=3)[0]
  [r] = det([image])
  got = run(image)
  n = len(r["scores"])
  assert got["valid"].sum() == n > 0
  np.testing.assert_allclose(got["boxes"][:n], r["boxes"], atol=1e-3)
  np.testing.assert_allclose(got["scores"][:n], r["scores"], atol=1e-5)
  np.testing.assert_array_equal(got["classes"][:n], r["labels"])


def _family_variant(name):
  """The tiny model with one family part changed (fcos_jax/model/config.py)."""
  from fcos_jax.model import config as presets
  if name == "gfl":  # No centre-ness; boxes from the 0..reg_max distribution.
    # With random weights every box decodes to about the same size: a high
    # NMS IoU keeps enough detections to compare.
    return CFG.replace(quality=presets.GFLJointQuality(),
                       loss=presets.GFLLoss(), location_offset="zero",
                       nms_iou=0.95)
  if name == "iou":
    return CFG.replace(quality=presets.IoUQuality())
  return presets.with_p2(CFG)  # Six levels, stride 4 .. 128.


@pytest.mark.parametrize("variant", ["gfl", "iou", "p2"])
def test_family_variants_export_to_stablehlo(tmp_path, variant):
  cfg = _family_variant(variant)
  params = serving.as_numpy_params(
      init_variables(cfg, jax.random.key(3))["params"])
  path = str(tmp_path / "m.jax_export")
  stablehlo.save(stablehlo.export(cfg, params, CANVASES[0],
                                  platforms=("cpu",)), path)
  args = inputs(0, seed=7)
  assert_same_detections(jax.device_get(stablehlo.load(path).call(*args)),
                         reference(cfg, params, args))


def test_gfl_exports_to_onnx(tmp_path):
  """The GFL head (no centre-ness, integral box decoding) through jax2onnx
  and ONNX's NMS: the same detections up to the order of equal scores."""
  pytest.importorskip("onnxruntime")
  pytest.importorskip("jax2onnx")
  from fcos_jax.export import onnx_export
  cfg = _family_variant("gfl").replace(pre_nms_topk=20)
  params = serving.as_numpy_params(
      init_variables(cfg, jax.random.key(4))["params"])
  path = str(tmp_path / "gfl.onnx")
  onnx_export.export(cfg, params, CANVASES[0], path, batch=1)
  run = onnx_export.load(path)
  args = tuple(a[:1] for a in inputs(0, seed=8))
  want = reference(cfg, params, args)
  assert want["valid"].sum() >= 5
  assert_matching_detections(run(*args), want, 1e-3, 1e-5, 1.0)
