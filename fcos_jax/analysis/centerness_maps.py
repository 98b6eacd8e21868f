"""Predicted and target centre-ness maps of chosen images, per level (paper
Figs. 3 and 8): where the model thinks an object's centre is, beside what
the assigner trains it towards.

Each image goes through evaluation's decode and resize
(`inference.images`), the model gives sigmoid(centerness) at every
location, and `targets.assign_targets` (the model's own rule) gives the
target centre-ness, 0 on background. Both are drawn over the image, one
tile per level (`inference.draw.draw_heatmaps`): predicted on the top row,
target below.
"""

from __future__ import annotations

import io

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from fcos_jax import errors, storage
from fcos_jax.core import assign
from fcos_jax.analysis import split_boxes
from fcos_jax.data.coco_format import ExampleTable
from fcos_jax.inference import draw, images
from fcos_jax.core import detect
from fcos_jax.model.config import ModelConfig
from fcos_jax.core.locations import compute_locations


def level_maps(flat, locations, image_hw) -> list[np.ndarray]:
  """[P] values -> per level [h_l, w_l], cropped to the cells over the
  resized image (the rest of the canvas is padding)."""
  out = []
  for level, (h, w) in enumerate(locations.level_sizes):
    stride = int(locations.strides[locations.level_starts[level]])
    m = np.asarray(flat[locations.level_slice(level)]).reshape(h, w)
    out.append(m[:max(1, -(-image_hw[0] // stride)),
                 :max(1, -(-image_hw[1] // stride))])
  return out


def _maps_fn(cfg: ModelConfig, canvas_hw):
  if cfg.quality.name != "centerness":
    raise errors.ConfigError(
        f"centerness maps: model.quality.name={cfg.quality.name!r} has no "
        "centre-ness branch; this analysis needs a FCOS (centerness) model.")
  locations = compute_locations(canvas_hw, cfg)

  @jax.jit
  def fn(params, image, image_hw, boxes, classes, box_valid, is_crowd):
    outputs = detect.head_outputs(params, image, image_hw, cfg)
    predicted = jax.nn.sigmoid(outputs.centerness.astype(jnp.float32))
    tgt = assign.assign(boxes, classes, box_valid, is_crowd, locations, cfg)
    return predicted, tgt.centerness

  return fn, locations


def draw_centerness(params, cfg: ModelConfig, table: ExampleTable, data_cfg,
                    image_ids, out_dir: str, tile: int = 192) -> list[str]:
  """Writes OUT_DIR/centerness_<image id>.png for each of `image_ids`
  (images of `table`); returns the paths."""
  resizer = images.Resizer(data_cfg.min_size, data_cfg.max_size,
                           data_cfg.canvases)
  row_of = {int(i): r for r, i in enumerate(table.image_ids)}
  missing = [i for i in image_ids if int(i) not in row_of]
  if missing:
    raise errors.DataError(f"--image_ids: {missing[:5]} are not in the split "
                           f"(its first ids: {[int(i) for i in table.image_ids[:5]]}).")
  programs, written = {}, []
  for image_id in image_ids:
    r = row_of[int(image_id)]
    one = table.subset(np.arange(len(table)) == r)
    (canvas_hw, batch), = split_boxes.box_batches(one, data_cfg, 1)
    picture = images.read_image(str(table.paths[r]), exif=False)
    _, canvas, resized_hw = resizer(picture, name=str(table.paths[r]))
    if canvas_hw not in programs:
      programs[canvas_hw] = _maps_fn(cfg, canvas_hw)
    fn, locations = programs[canvas_hw]
    predicted, target = fn(params, canvas[None],
                           np.asarray([resized_hw], np.int32),
                           batch["boxes"], batch["classes"],
                           batch["box_valid"], batch["is_crowd"])
    strides = [int(s) for s in cfg.strides]
    rows = [draw.draw_heatmaps(picture, level_maps(m[0], locations,
                                                   resized_hw), strides,
                               tile=tile)
            for m in (predicted, target)]
    sheet = Image.new("RGB", (rows[0].width, rows[0].height * 2 + 4),
                      (255, 255, 255))
    sheet.paste(rows[0], (0, 0))
    sheet.paste(rows[1], (0, rows[0].height + 4))
    png = io.BytesIO()
    sheet.save(png, format="PNG", optimize=True)
    path = storage.join(out_dir, f"centerness_{int(image_id)}.png")
    storage.write_bytes_atomic(path, png.getvalue())
    written.append(path)
  return written
