"""fcos_jax.inference: image files in, the evaluation pipeline's detections
out; EXIF, formats, file lists, compile-once-per-canvas, the Detector API."""

import io
import os

import jax
import numpy as np
import pytest
from PIL import Image, ImageOps

import coco_files as testing
from fcos_jax.data.config import default_data_config
from fcos_jax import errors
from fcos_jax.inference import images as images_lib
from fcos_jax.inference import predictor as predictor_lib
from fcos_jax.inference.detector import Detector
from fcos_jax.model.fcos import init_variables
from tiny_run import tiny_model

CFG = tiny_model(num_classes=2)
CANVASES = ((64, 128), (128, 64))
# Landscape, portrait, capped by max_size, unchanged, enlarged.
SIZES = ((90, 120), (120, 90), (77, 203), (64, 100), (40, 50))


@pytest.fixture(scope="module")
def params():
  return init_variables(CFG, jax.random.key(0))["params"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  d = tmp_path_factory.mktemp("coco")
  rng = np.random.default_rng(0)
  entries = testing.random_images(len(SIZES), sizes=SIZES)
  gt_json, img_dir = testing.write_coco(str(d), entries, fmt="jpg")
  # Texture, so the model sees more than flat rectangles.
  for name in sorted(os.listdir(img_dir)):
    p = os.path.join(img_dir, name)
    x = np.asarray(Image.open(p)).astype(np.int16)
    x = np.clip(x + rng.integers(0, 80, x.shape), 0, 255).astype(np.uint8)
    Image.fromarray(x).save(p, quality=90)
  return gt_json, img_dir


def test_exif_orientations_match_pil():
  x = np.random.default_rng(0).integers(0, 255, (5, 7, 3), dtype=np.uint8)
  for orientation in range(1, 9):
    im = Image.fromarray(x)
    exif = im.getexif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    im.save(buf, "PNG", exif=exif)
    data = buf.getvalue()
    assert images_lib.exif_orientation(data) == orientation
    want = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))))
    np.testing.assert_array_equal(images_lib.decode(data), want)
    # Evaluation's convention: the stored pixels.
    np.testing.assert_array_equal(images_lib.decode(data, exif=False), x)


def test_exif_rotated_jpeg_is_upright():
  """A camera JPEG stored sideways (tag 6: turn 90 degrees clockwise): the
  decoded pixels (TF's JPEG decoder) turned by hand."""
  x = np.random.default_rng(1).integers(0, 255, (6, 10, 3), dtype=np.uint8)
  im = Image.fromarray(x)
  exif = im.getexif()
  exif[0x0112] = 6
  buf = io.BytesIO()
  im.save(buf, "JPEG", exif=exif, quality=95)
  stored = images_lib.decode(buf.getvalue(), exif=False)
  upright = images_lib.decode(buf.getvalue())
  assert stored.shape == (6, 10, 3) and upright.shape == (10, 6, 3)
  np.testing.assert_array_equal(upright, np.rot90(stored, k=-1))
  assert upright.flags.writeable


def _png_claiming(width, height):
  """A small PNG whose header (IHDR, CRC fixed) claims width x height."""
  import struct
  import zlib
  buf = io.BytesIO()
  Image.new("L", (4, 4)).save(buf, "PNG")
  data = bytearray(buf.getvalue())
  at = data.index(b"IHDR")
  data[at + 4:at + 12] = struct.pack(">II", width, height)
  data[at + 17:at + 21] = struct.pack(">I", zlib.crc32(data[at:at + 17]))
  return bytes(data)


def test_decompression_bomb_is_refused_by_name_before_decoding():
  with pytest.raises(errors.UnreadableImage) as e:
    images_lib.decode(_png_claiming(20000, 20000), name="huge.png")
  assert "huge.png" in str(e.value) and "Downscale" in str(e.value)
  assert "400000000 pixels" in str(e.value)


def test_formats_grayscale_cmyk_and_garbage(tmp_path):
  gray = np.random.default_rng(1).integers(0, 255, (9, 11), dtype=np.uint8)
  Image.fromarray(gray).save(tmp_path / "g.png")
  Image.fromarray(np.zeros((9, 11, 3), np.uint8)).convert("CMYK").save(
      tmp_path / "c.jpg")
  (tmp_path / "bad.jpg").write_bytes(b"not an image")
  g = images_lib.read_image(str(tmp_path / "g.png"))
  assert g.shape == (9, 11, 3) and (g == gray[..., None]).all()
  assert images_lib.read_image(str(tmp_path / "c.jpg")).shape == (9, 11, 3)
  with pytest.raises(errors.UnreadableImage, match="bad.jpg"):
    images_lib.read_image(str(tmp_path / "bad.jpg"))
  with pytest.raises(errors.UnreadableImage, match="missing.png"):
    images_lib.read_image(str(tmp_path / "missing.png"))


def test_list_images(tmp_path, monkeypatch):
  for name in ("b.jpg", "a.PNG", "notes.txt"):
    (tmp_path / name).write_bytes(b"x")
  (tmp_path / "sub").mkdir()
  (tmp_path / "sub" / "c.jpg").write_bytes(b"x")
  d = str(tmp_path)
  assert images_lib.list_images(d) == [f"{d}/a.PNG", f"{d}/b.jpg"]
  assert images_lib.list_images(f"{d}/*.jpg") == [f"{d}/b.jpg"]
  assert images_lib.list_images(f"{d}/**/*.jpg") == [f"{d}/b.jpg",
                                                     f"{d}/sub/c.jpg"]
  assert images_lib.list_images(f"{d}/b.jpg") == [f"{d}/b.jpg"]
  with pytest.raises(FileNotFoundError, match="no such file"):
    images_lib.list_images(f"{d}/nope")
  with pytest.raises(FileNotFoundError, match="matches no file"):
    images_lib.list_images(f"{d}/*.gif")
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match="no image files"):
    images_lib.list_images(str(tmp_path / "empty"))
  monkeypatch.chdir(tmp_path)  # --images= is not the current folder (which
  # has images).
  for empty in ("", " "):
    with pytest.raises(errors.MissingFileError, match="is empty"):
      images_lib.list_images(empty)


def _eval_detections(gt_json, img_dir, params):
  """The evaluation pipeline + eval_step on the same files."""
  from fcos_jax import runtime
  from fcos_jax.data import global_batch, pipeline
  from fcos_jax.core.detect import eval_step
  data = _data_config(gt_json, img_dir)
  mesh = runtime.make_mesh()
  fn = jax.jit(lambda p, b: eval_step(p, b, cfg=CFG))
  out = {}
  for local in pipeline.build_eval_dataset(data, jax.device_count(), 0, 1):
    batch = global_batch.to_global_batch(local, mesh)
    dets = jax.device_get(fn(params, batch))
    for i, image_id in enumerate(dets["image_id"]):
      if local["example_valid"][i]:
        keep = dets["valid"][i]
        out[int(image_id)] = (dets["boxes"][i][keep], dets["scores"][i][keep],
                              dets["classes"][i][keep])
  return out


def _data_config(gt_json, img_dir):
  data = default_data_config()
  data.source = "coco_format"
  data.coco.train_json = data.coco.val_json = gt_json
  data.coco.train_images = data.coco.val_images = img_dir
  data.min_size, data.max_size, data.canvases = 64, 128, CANVASES
  return data


def test_predictor_on_files_equals_the_evaluation_pipeline(dataset, params):
  gt_json, img_dir = dataset
  want = _eval_detections(gt_json, img_dir, params)
  resizer = images_lib.Resizer((48, 64), 128, CANVASES)  # max of the range
  pred = predictor_lib.Predictor(CFG, params, resizer)
  paths = sorted(os.path.join(img_dir, f) for f in os.listdir(img_dir))
  got = dict(pred.stream(predictor_lib.load_prepared(pred, paths, exif=False)))
  assert pred.num_compiled == 2  # One per canvas.
  assert len(got) == len(want) == len(SIZES)
  for i, path in enumerate(paths):
    image_id = int(os.path.basename(path).split(".")[0])
    boxes, scores, classes = want[image_id]
    assert len(scores) > 10
    np.testing.assert_array_equal(got[i]["boxes"], boxes)
    np.testing.assert_array_equal(got[i]["scores"], scores)
    np.testing.assert_array_equal(got[i]["labels"], classes)
  # Again, in another order and batch composition: nothing recompiles and
  # the same detections come out.
  again = pred([images_lib.read_image(p) for p in paths[::-1]])
  assert pred.num_compiled == 2
  for i, r in enumerate(again[::-1]):
    np.testing.assert_allclose(r["boxes"], got[i]["boxes"], atol=1e-4)
    np.testing.assert_array_equal(r["labels"], got[i]["labels"])


def test_detector_api(dataset, params):
  gt_json, img_dir = dataset
  cats = [{"id": 1, "name": "a"}, {"id": 7, "name": "b"}]
  det = Detector(CFG, params, cats, min_size=64, max_size=128,
                 canvases=CANVASES, batch_size=3)
  assert det.predictor.batch_size == jax.local_device_count()  # rounded up
  path = os.path.join(img_dir, sorted(os.listdir(img_dir))[0])
  image = images_lib.read_image(path)
  gray = image[..., 0]
  outs = det([path, image, gray], heatmaps=True)
  assert len(outs) == 3
  for k in ("boxes", "scores", "labels"):
    np.testing.assert_array_equal(outs[0][k], outs[1][k])
  o = outs[0]
  assert o["boxes"].shape == (len(o["scores"]), 4) and len(o["scores"]) > 0
  assert (np.diff(o["scores"]) <= 0).all()
  assert set(o["names"]) <= {"a", "b"}
  np.testing.assert_array_equal(o["category_ids"],
                                np.where(o["labels"] == 0, 1, 7))
  h, w = image.shape[:2]
  assert (o["boxes"][:, 2] <= w).all() and (o["boxes"][:, 3] <= h).all()
  # Heatmaps: one per level over the resized image's cells, in [0, 1].
  assert len(o["maps"]) == 5 and o["maps"][0].shape == (8, 11)  # 64x85 / 8
  assert all(0 <= m.min() and m.max() <= 1 for m in o["maps"])
  (single,) = det(path)
  np.testing.assert_array_equal(single["scores"], o["scores"])
  import fcos_jax
  assert fcos_jax.Detector is Detector


def test_drawing(dataset, params):
  from fcos_jax.inference import draw
  image = np.full((60, 90, 3), 128, np.uint8)
  boxes = np.array([[10, 0, 50, 30], [5, 20, 80, 55]], np.float32)
  pic = draw.draw_detections(image, boxes, np.array([0.9, 0.5]),
                             np.array([0, 1]), ["cat", "dog"], min_score=0.6,
                             min_side=1)
  arr = np.asarray(pic)
  assert arr.shape == (60, 90, 3)
  assert (arr[0:30, 10] == draw.class_colour(0)).all(axis=-1).any()
  assert not (arr == draw.class_colour(1)).all(axis=-1).any()  # below min
  # Small pictures are enlarged so the labels stay readable.
  big = draw.draw_detections(image, boxes, np.array([0.9, 0.5]),
                             np.array([0, 1]), ["cat", "dog"])
  assert (big.height, big.width) == (512, 768)
  maps = [np.random.default_rng(0).uniform(size=(8 // 2**i or 1,) * 2)
          for i in range(5)]
  sheet = draw.draw_heatmaps(image, maps, (8, 16, 32, 64, 128), tile=64)
  assert sheet.width == 5 * (64 + 4)
