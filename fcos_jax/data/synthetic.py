"""A deterministic synthetic detection dataset, written in COCO format.

Five classes of filled shapes (rectangle, ellipse, triangle, cross, ring) in
colours that contrast with a textured background (gradient + noise), from
about 8 pixels to most of the image, overlapping but never hidden: a new
shape is rejected if it would leave an earlier one less than 60% visible,
and every box is the tight box of the visible pixels of its shape. About 1
image in 12 has no object; about 1 in 10 has a crowd (iscrowd=1) region of
many small shapes of one class.

The dataset is a pure function of its parameters; `ensure_synthetic_dataset`
writes it once and reuses it. It writes only into a new or empty folder, or
one it made itself (its stamp file `.fcos_jax_synthetic` is there), and
never deletes anything else; any folder `fcos_jax.storage` reaches works
(gs:// too). The stamp is written first as "in progress" and last as
"complete", so a reader never takes a half-written dataset for a whole one
(object stores have no atomic folder rename).
"""

from __future__ import annotations

import io
import re

import numpy as np
from PIL import Image

from absl import logging

from fcos_jax import storage
from fcos_jax.errors import DataError
from fcos_jax.progress import bar

CLASSES = ("rectangle", "ellipse", "triangle", "cross", "ring")
MIN_VISIBLE = 0.6  # Fraction of a shape that must stay visible.
_VERSION = 2  # Bump when the generator changes: forces a remake.
STAMP = ".fcos_jax_synthetic"  # {"params": ..., "complete": bool}.
_LEGACY_STAMP = "params.json"  # The stamp of folders made before STAMP.
_OURS = ("train", "val", "train.json", "val.json")  # Everything else we write.


def _shape_mask(kind: int, h: int, w: int) -> np.ndarray:
  """bool [h, w] mask of shape `kind` filling an h x w box."""
  y = (np.arange(h)[:, None] + 0.5) / h * 2 - 1  # -1..1 across the box.
  x = (np.arange(w)[None, :] + 0.5) / w * 2 - 1
  if kind == 0:
    return np.ones((h, w), bool)
  if kind == 1:
    return x * x + y * y <= 1.0
  if kind == 2:  # Triangle pointing up.
    return np.abs(x) <= (y + 1) / 2
  if kind == 3:
    return (np.abs(x) <= 0.33) | (np.abs(y) <= 0.33)
  r = x * x + y * y
  return (r <= 1.0) & (r >= 0.3)


def _background(rng, h: int, w: int):
  """float [h, w, 3] gradient between two dull colours plus noise, and
  [5, 3] colours along the gradient (for the contrast test)."""
  c0, c1 = rng.uniform(40, 140, 3), rng.uniform(40, 140, 3)
  if rng.random() < 0.5:
    c0, c1 = 255 - c0, 255 - c1  # Light backgrounds too.
  t = np.linspace(0, 1, w)[None, :, None] if rng.random() < 0.5 else \
      np.linspace(0, 1, h)[:, None, None]
  img = c0 + (c1 - c0) * t + np.zeros((h, w, 3))
  along = c0 + (c1 - c0) * np.linspace(0, 1, 5)[:, None]
  return img + rng.normal(0, rng.uniform(2, 12), (h, w, 1)), along


def _contrasting_colour(rng, background: np.ndarray) -> np.ndarray:
  """A colour far (L1 > 200 when possible) from every background colour."""
  best, best_d = None, -1.0
  for _ in range(50):
    c = rng.uniform(0, 255, 3)
    d = np.abs(c[None] - background).sum(-1).min()
    if d > 200:
      return c
    if d > best_d:
      best, best_d = c, d
  return best


def _draw(img, owner, mask, y0, x0, colour, index, rng):
  """Paints `mask` at (y0, x0) with a lightly textured colour."""
  h, w = mask.shape
  texture = rng.normal(0, 6, (h, w, 1))
  region = img[y0:y0 + h, x0:x0 + w]
  region[mask] = (colour + texture)[mask]
  owner[y0:y0 + h, x0:x0 + w][mask] = index


def _visible_box(owner, index):
  ys, xs = np.nonzero(owner == index)
  return (float(xs.min()), float(ys.min()), float(xs.max() + 1),
          float(ys.max() + 1)), int(len(xs))


def make_image(rng, height: int, width: int):
  """One image: uint8 [H, W, 3] and its annotations (list of dicts with
  bbox [x, y, w, h], category (0-based), iscrowd, area)."""
  img, bg_colours = _background(rng, height, width)
  owner = np.full((height, width), -1, np.int32)
  anns, full_area = [], {}
  n_obj = 0 if rng.random() < 1 / 12 else int(rng.integers(1, 7))
  side = min(height, width)
  crowd_box = None
  if rng.random() < 0.1:  # A crowd: many small shapes of one class.
    kind = int(rng.integers(len(CLASSES)))
    ch, cw = int(side * rng.uniform(0.2, 0.35)), int(side * rng.uniform(0.2, 0.35))
    cy, cx = int(rng.integers(0, height - ch)), int(rng.integers(0, width - cw))
    colour = _contrasting_colour(rng, bg_colours)
    for _ in range(int(rng.integers(8, 16))):
      s = int(rng.integers(5, 9))
      y, x = cy + int(rng.integers(0, ch - s)), cx + int(rng.integers(0, cw - s))
      _draw(img, owner, _shape_mask(kind, s, s), y, x, colour, 1000, rng)
    box, area = _visible_box(owner, 1000)
    crowd_box = box
    anns.append({"bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]],
                 "category": kind, "iscrowd": 1, "area": area})
  tries = 0
  while n_obj and tries < 4 * n_obj + 10 and len(full_area) < n_obj:
    tries += 1
    kind = int(rng.integers(len(CLASSES)))
    size = float(np.exp(rng.uniform(np.log(8), np.log(0.8 * side))))
    aspect = float(np.exp(rng.uniform(-0.5, 0.5)))
    h = int(np.clip(round(size * aspect), 8, height))
    w = int(np.clip(round(size / aspect), 8, width))
    y0, x0 = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
    if crowd_box and not (x0 >= crowd_box[2] or x0 + w <= crowd_box[0] or
                          y0 >= crowd_box[3] or y0 + h <= crowd_box[1]):
      continue
    mask = _shape_mask(kind, h, w)
    under = owner[y0:y0 + h, x0:x0 + w][mask]
    hidden = np.bincount(under[under >= 0], minlength=1)
    ok = all(1 - hidden[k] / full_area[k] >= MIN_VISIBLE
             for k in full_area if k < len(hidden) and hidden[k])
    if not ok:
      continue  # Would hide an earlier shape too much.
    k = len(full_area)
    full_area[k] = int(mask.sum())
    anns.append({"kind": kind, "index": k})
    _draw(img, owner, mask, y0, x0, _contrasting_colour(rng, bg_colours), k, rng)
  out = []
  for a in anns:
    if "index" in a:
      box, area = _visible_box(owner, a["index"])
      a = {"bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]],
           "category": a["kind"], "iscrowd": 0, "area": area}
    out.append(a)
  return np.clip(np.round(img), 0, 255).astype(np.uint8), out


def _image_hw(image_size) -> tuple[int, int]:
  if isinstance(image_size, (tuple, list)):
    return int(image_size[0]), int(image_size[1])
  return int(image_size), int(image_size)


def _encode_jpeg(pixels: np.ndarray) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(pixels).save(buf, format="JPEG", quality=92)
  return buf.getvalue()


def write_split(out_dir: str, split: str, num_images: int, image_size,
                seed: int, first_image_id: int = 1) -> str:
  """Writes images under out_dir/split/ and out_dir/split.json; the json path.

  Through `fcos_jax.storage` (any local folder or URL); the JSON last.
  """
  height, width = _image_hw(image_size)
  img_dir = storage.join(out_dir, split)
  storage.makedirs(img_dir)
  images, annotations = [], []
  split_key = {"train": 0, "val": 1}.get(split, 2)
  progress = bar(num_images, f"synthetic {split}")
  for i in range(num_images):
    rng = np.random.default_rng([seed, split_key, i])
    pixels, anns = make_image(rng, height, width)
    image_id = first_image_id + i
    name = f"{image_id:08d}.jpg"
    storage.write_bytes_atomic(storage.join(img_dir, name),
                               _encode_jpeg(pixels))
    images.append({"id": image_id, "file_name": name, "width": width,
                   "height": height})
    for a in anns:
      annotations.append({
          "id": len(annotations) + 1, "image_id": image_id,
          "category_id": a["category"] + 1, "bbox": a["bbox"],
          "area": float(a["area"]), "iscrowd": a["iscrowd"],
          "segmentation": []})
    progress.update(1)
  progress.close()
  path = storage.join(out_dir, f"{split}.json")
  storage.write_json_atomic(
      path, {"images": images, "annotations": annotations,
             "categories": [{"id": i + 1, "name": n}
                            for i, n in enumerate(CLASSES)]})
  return path


def _files(d: str) -> dict[str, str]:
  return {"train_json": storage.join(d, "train.json"),
          "train_images": storage.join(d, "train"),
          "val_json": storage.join(d, "val.json"),
          "val_images": storage.join(d, "val")}


def _read_json_or_none(p: str):
  try:
    return storage.read_json(p)
  except (OSError, ValueError):  # Missing, unreadable or not JSON.
    return None


def _stamp(directory: str) -> dict | None:
  """Our stamp in `directory` ({"params", "complete"}), or None."""
  s = _read_json_or_none(storage.join(directory, STAMP))
  return s if isinstance(s, dict) and "params" in s else None


def _legacy_params(directory: str, entries: list[str]) -> dict | None:
  """The params of a folder made by the generator before STAMP existed:
  nothing in it but what it wrote, and its params.json."""
  if _LEGACY_STAMP not in entries or not set(entries) <= {*_OURS,
                                                          _LEGACY_STAMP}:
    return None
  p = _read_json_or_none(storage.join(directory, _LEGACY_STAMP))
  keys = {"version", "num_train", "num_val", "image_size", "seed"}
  return p if isinstance(p, dict) and set(p) == keys else None


_OUR_IMAGE = re.compile(r"^(\d{8}\.jpg|\.\d{8}\.jpg\.tmp-[0-9a-f]{8})$")


def _remove_our_images(folder) -> None:
  """Deletes the images the generator writes in a split folder (named
  NNNNNNNN.jpg, or a temporary of one) and nothing else: a file a user put
  there (train/my_extra_photo.jpg) stays, and so does the folder then."""
  others = False
  for p in folder.iterdir():
    if _OUR_IMAGE.match(p.name) and not p.is_dir():
      p.unlink()
    else:
      others = True
  if not others:
    try:
      folder.rmdir()
    except (OSError, NotImplementedError):  # Object stores: no empty folders.
      pass


def is_complete(directory: str, params: dict) -> bool:
  s = _stamp(directory)
  return bool(s) and s.get("complete") is True and s["params"] == params


def dataset_params(num_train: int = 2000, num_val: int = 200, image_size=256,
                   seed: int = 0) -> dict:
  """What the dataset is a function of (the stamp's "params")."""
  return {"version": _VERSION, "num_train": int(num_train),
          "num_val": int(num_val), "image_size": list(_image_hw(image_size)),
          "seed": int(seed)}


def ensure_synthetic_dataset(directory: str, num_train: int = 2000,
                             num_val: int = 200, image_size=256,
                             seed: int = 0) -> dict[str, str]:
  """Makes the dataset in `directory` unless it is there with these
  parameters; returns {train_json, train_images, val_json, val_images}.

  image_size: side of square images, or (H, W). `directory` must be new,
  empty, or made by this generator (with other parameters it is remade:
  only what the generator wrote is deleted, i.e. train.json, val.json and
  the NNNNNNNN.jpg images in train/ and val/; a file a user added there
  survives); a folder with anything else in it is refused with a
  DataError, never emptied.
  """
  params = dataset_params(num_train, num_val, image_size, seed)
  if is_complete(directory, params):
    return _files(directory)
  root = storage.path(directory)
  if root.exists() and not root.is_dir():
    raise DataError(f"data.synthetic.dir={directory!r} is a file, not a "
                    "folder: choose another data.synthetic.dir.")
  entries = sorted(p.name for p in root.iterdir()) if root.exists() else []
  stamp = _stamp(directory) if STAMP in entries else None
  legacy = None if stamp else _legacy_params(directory, entries)
  if legacy == params:  # Made by an earlier version, same dataset.
    return _files(directory)
  if entries and stamp is None and legacy is None:
    shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
    raise DataError(
        f"data.synthetic.dir={directory!r} already holds files ({shown}) that "
        f"the synthetic generator did not write (no {STAMP} stamp). It writes "
        "only into a new or empty folder, so as not to overwrite or delete "
        "them: choose another data.synthetic.dir, or empty this folder.")
  # Ours or empty. The in-progress stamp goes first: a crash from here on
  # leaves a folder we recognise as ours (remade next time), never one
  # taken for complete.
  storage.makedirs(directory)
  storage.write_json_atomic(storage.join(directory, STAMP),
                            {"params": params, "complete": False})
  for name in (*_OURS, _LEGACY_STAMP):
    if name in entries:
      p = root / name
      if p.is_dir():
        _remove_our_images(p)
      else:
        p.unlink()
  logging.info("Generating the synthetic dataset in %s (%d + %d images, "
               "once; later runs reuse it).", directory, num_train, num_val)
  write_split(directory, "train", num_train, image_size, seed,
              first_image_id=1)
  write_split(directory, "val", num_val, image_size, seed,
              first_image_id=1_000_000)
  storage.write_json_atomic(storage.join(directory, STAMP),
                            {"params": params, "complete": True})
  return _files(directory)
