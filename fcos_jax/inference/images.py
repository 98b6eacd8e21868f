"""Image files for prediction: finding them, reading, decoding, resizing.

Decoding and resizing are the evaluation pipeline's own TF ops
(`fcos_jax.data.transforms`), so an image predicted from its file gets
exactly the pixels evaluation feeds the model. Bytes are read through
`fcos_jax.storage` (local paths and URLs alike).

EXIF orientation: phone cameras store the pixels sideways and an EXIF tag
saying how to turn them. `read_image(..., exif=True)` (the default for
prediction) applies the tag after decoding, so boxes come in the upright
picture's pixels, as photo viewers show it. COCO evaluation does not (the
COCO annotations are in the stored pixel order, and its images'
width/height fields say so): evaluation and `exif=False` ignore the tag.
"""

from __future__ import annotations

import fnmatch
import glob as glob_lib
import io
import os
import re

import numpy as np

from fcos_jax import storage
from fcos_jax.data import pipeline, transforms
from fcos_jax.errors import DataError, MissingFileError, UnreadableImage
from fcos_jax.data.tf_setup import tf

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
_WILDCARDS = "*?["
_EXIF_ORIENTATION = 0x0112


def _url_glob(spec: str) -> list[str]:
  """The files matching a URL pattern: `*`, `?` and `[...]` within one path
  part, `**` across any number of folders (walked here: the gs:// clients
  refuse `**` themselves)."""
  first = min(spec.index(c) for c in _WILDCARDS if c in spec)
  base = spec[:spec.rindex("/", 0, first)]
  pattern = spec[len(base) + 1:]
  if "**" not in pattern:
    return [os.fspath(p) for p in storage.path(base).glob(pattern)]
  regex = ""
  for i, part in enumerate(pattern.split("/")):
    last = i == len(pattern.split("/")) - 1
    if part == "**":
      regex += ".*" if last else "(?:[^/]+/)*"
      continue
    # fnmatch's translation of one part, its "." kept within the part.
    one = fnmatch.translate(part)[len("(?s:"):-len(")\\Z")]
    regex += one.replace(".*", "[^/]*").replace(".", "[^/]").replace(
        "\\[^/]", "\\.") + ("" if last else "/")
  matcher = re.compile(f"(?s:{regex})\\Z")
  found, todo = [], [storage.path(base)]
  while todo:
    for q in todo.pop().iterdir():
      if q.is_dir():
        todo.append(q)
      else:
        rel = os.fspath(q)[len(base) + 1:]
        if matcher.match(rel):
          found.append(os.fspath(q))
  return found


def list_images(spec: str) -> list[str]:
  """Image paths of a file, a directory (its image files, sorted; not
  recursive) or a glob pattern (`dir/*.jpg`, `dir/**/*.jpg`, the same on
  gs://), sorted.

  Raises MissingFileError when nothing matches, naming what was looked at
  (StorageError for a bucket that does not exist or storage that does not
  answer).
  """
  spec = str(spec)
  forms = ("a file, a folder, or a pattern with * ? [...] within a path "
           "part and ** across folders (e.g. gs://bucket/photos/**/*.jpg)")
  if not spec.strip():  # Not the current folder, unasked.
    raise MissingFileError(f"--images={spec!r} is empty: give {forms}.")
  if any(c in spec for c in _WILDCARDS):
    if storage.is_url(spec):
      with storage.guard(spec, "list"):
        try:
          paths = _url_glob(spec)
        except FileNotFoundError:
          storage.check_bucket(spec)
          paths = []
        except (NotImplementedError, ValueError) as e:
          raise MissingFileError(f"--images={spec}: {e}; give {forms}.") \
              from None
        paths = [p for p in paths if not storage.path(p).is_dir()]
    else:
      paths = glob_lib.glob(os.path.expanduser(spec), recursive=True)
      paths = [p for p in paths if not os.path.isdir(p)]
    paths = sorted(paths)
    if not paths:
      storage.check_bucket(spec)
      raise MissingFileError(f"--images={spec}: the pattern matches no file.")
    return paths
  p = storage.path(spec)
  with storage.guard(spec, "list"):
    if not p.exists():
      storage.check_bucket(spec)
      raise MissingFileError(f"--images={spec}: no such file or directory "
                             f"(give {forms}).")
    if p.is_dir():
      paths = sorted(os.fspath(q) for q in p.iterdir()
                     if q.suffix.lower() in IMAGE_EXTENSIONS and not q.is_dir())
      if not paths:
        raise MissingFileError(
            f"--images={spec}: the directory has no image files "
            f"({', '.join(IMAGE_EXTENSIONS)}).")
      return paths
  return [spec]


def exif_orientation(data: bytes) -> int:
  """The EXIF orientation tag (1..8) of encoded image bytes; 1 without one."""
  try:
    from PIL import Image  # pylint: disable=import-outside-toplevel
    with Image.open(io.BytesIO(data)) as im:
      value = int(im.getexif().get(_EXIF_ORIENTATION, 1))
  except Exception:  # pylint: disable=broad-except  (no EXIF, odd formats)
    return 1
  return value if 1 <= value <= 8 else 1


def apply_orientation(image: np.ndarray, orientation: int) -> np.ndarray:
  """[h, w, 3] stored pixels -> the upright picture the EXIF tag describes
  (PIL's `ImageOps.exif_transpose`, on the pixels TF decoded)."""
  if int(orientation) == 1:
    return image
  from PIL import Image, ImageOps  # pylint: disable=import-outside-toplevel
  picture = Image.fromarray(np.ascontiguousarray(image))
  picture.getexif()[_EXIF_ORIENTATION] = int(orientation)
  return np.array(ImageOps.exif_transpose(picture))  # Writable.


def _refuse_decompression_bombs(data: bytes, name: str) -> None:
  from PIL import Image  # pylint: disable=import-outside-toplevel
  try:
    with Image.open(io.BytesIO(data)):
      pass  # Opening reads the header and applies PIL's pixel limit.
  except Image.DecompressionBombError as e:
    raise UnreadableImage(
        f"{name}: not decoded: {e} Downscale it first (the detector "
        "resizes to at most max_size anyway).") from None
  except Exception:  # pylint: disable=broad-except  (TF's decoder decides)
    pass


def decode(data: bytes, *, exif: bool = True, name: str = "<bytes>"
           ) -> np.ndarray:
  """Encoded JPEG (incl. grayscale, CMYK), PNG, BMP, GIF -> uint8 [h, w, 3]
  RGB, with the evaluation pipeline's decoder; EXIF orientation applied
  when `exif`. Raises UnreadableImage naming `name`, also for an image
  over PIL's decompression-bomb limit (read from its header: nothing is
  decoded)."""
  _refuse_decompression_bombs(data, name)
  try:
    image = transforms.decode_image(tf.constant(data)).numpy()
  except (tf.errors.OpError, ValueError) as e:
    msg = getattr(e, "message", str(e)).strip().splitlines()
    raise UnreadableImage(
        f"{name}: not a readable image ({msg[0] if msg else type(e).__name__})"
    ) from None
  if image.shape[0] == 0 or image.shape[1] == 0:
    raise UnreadableImage(f"{name}: the image is empty ({image.shape}).")
  if exif:
    image = apply_orientation(image, exif_orientation(data))
  return image


def read_image(path: str, *, exif: bool = True) -> np.ndarray:
  """uint8 [h, w, 3] RGB of an image file or URL (see `decode`)."""
  try:
    data = storage.read_bytes(path)
  except (OSError, ValueError) as e:
    raise UnreadableImage(f"{path}: cannot be read ({e})") from None
  return decode(data, exif=exif, name=str(path))


def _resize_and_pad_fn(min_size: int, max_size: int):
  """The evaluation pipeline's resize onto a canvas (`transform_example`
  with train=False, without the boxes), as one traced TF function."""

  @tf.function(input_signature=(tf.TensorSpec([None, None, 3], tf.uint8),
                                tf.TensorSpec([2], tf.int32)))
  def fn(image, canvas_hw):
    out_hw = transforms.resized_hw(tf.shape(image)[:2], min_size, max_size)
    out_hw = tf.minimum(out_hw, canvas_hw)
    image = transforms.resize_image(image, out_hw)
    return transforms.pad_image(image, canvas_hw), out_hw

  return fn


class Resizer:
  """The config's resize rule: short side to `min_size` (the largest of a
  (lo, hi) range, as evaluation), long side at most `max_size`, onto the
  smallest of `canvases` that holds the result (evaluation's bucket rule).
  """

  def __init__(self, min_size, max_size: int, canvases):
    self.min_size = int(max(min_size) if isinstance(min_size, (tuple, list))
                        else min_size)
    self.max_size = int(max_size)
    self.canvases = tuple(tuple(int(v) for v in c) for c in canvases)
    self._fn = _resize_and_pad_fn(self.min_size, self.max_size)

  def canvas_index(self, hw, name: str = "image") -> int:
    """Which canvas an image of size `hw` goes to; DataError if none fits."""

    class _One:  # The fields of an ExampleTable the bucket rule reads.
      heights = np.asarray([hw[0]])
      widths = np.asarray([hw[1]])
      paths = np.asarray([name])

    return int(pipeline.assign_buckets(_One, self.canvases, self.min_size,
                                       self.max_size)[0])

  def __call__(self, image: np.ndarray, name: str = "image"):
    """uint8 [h, w, 3] -> (canvas index, uint8 [H, W, 3] canvas, (rh, rw)
    the resized image's size in it)."""
    index = self.canvas_index(image.shape[:2], name)
    canvas, out_hw = self._fn(tf.constant(image),
                              tf.constant(self.canvases[index], tf.int32))
    return index, canvas.numpy(), tuple(int(v) for v in out_hw.numpy())


__all__ = ["DataError", "Resizer", "UnreadableImage", "apply_orientation",
           "decode", "exif_orientation", "list_images", "read_image"]
