"""Output folders of the commands that write results (fcos-predict,
fcos-export): never into a folder that holds anything unless asked, and
one picture name per input that no other input shares."""

from __future__ import annotations

import os
import posixpath

from fcos_jax import storage
from fcos_jax.errors import WorkdirError


def prepare_out_dir(out: str, *, overwrite: bool, flag: str = "--out",
                    command: str = "", make: bool = True) -> None:
  """Makes `out` (with `make`; else only the checks), refusing
  (WorkdirError, one line) an existing file and, unless `overwrite`, a
  folder that already holds something: its files could be taken for this
  run's, or replaced."""
  p = storage.path(out)
  try:
    exists = p.exists()
    is_dir = exists and p.is_dir()
    entries = sorted(q.name for q in p.iterdir()) if is_dir else []
  except OSError as e:
    raise WorkdirError(f"{flag}={out}: cannot be read ({e}).") from None
  if exists and not is_dir:
    raise WorkdirError(f"{flag}={out} is a file, not a folder: give a new or "
                       "empty folder.")
  if entries and not overwrite:
    shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
    raise WorkdirError(
        f"{flag}={out} already holds {len(entries)} entr"
        f"{'y' if len(entries) == 1 else 'ies'} ({shown}): give a new or "
        f"empty folder, or pass --overwrite to write into it (files of the "
        f"same names are replaced, others are kept){command}.")
  if not make:
    return
  try:
    storage.makedirs(out)
  except OSError as e:
    raise WorkdirError(f"{flag}={out}: cannot be made ({e}).") from None


def unique_names(paths) -> list[str]:
  """A file name stem per input, none shared: the input's stem, numbered
  (stem_1, stem_2, ...) where it is taken, compared without case (macOS and
  Windows folders ignore it), so a/photo.jpg, b/photo.jpg and c/photo_1.jpg
  get photo, photo_1 and photo_1_1."""
  taken, names = set(), []
  for p in paths:
    base = posixpath.basename(str(p).replace("\\", "/").rstrip("/"))
    stem = os.path.splitext(base)[0] or "image"
    name, n = stem, 0
    while name.lower() in taken:
      n += 1
      name = f"{stem}_{n}"
    taken.add(name.lower())
    names.append(name)
  return names


def _save_png(picture, path: str) -> None:
  import io  # pylint: disable=import-outside-toplevel
  buf = io.BytesIO()
  picture.save(buf, format="PNG")
  storage.write_bytes_atomic(path, buf.getvalue())


def predict_to_folder(det, paths, out: str, *, draw: bool = False,
                      heatmaps: bool = False, exif: bool = True,
                      workers: int = 4, draw_min_score: float | None = None,
                      draw_duplicate_iou: float | None = None,
                      on_image=None) -> dict:
  """Runs `det` (a Detector) over image files into `out` (made already,
  see `prepare_out_dir`): out/detections.json (COCO results with
  category_name and file_name; image_id = the input's position),
  out/draw/<name>.png (one label per object: `draw.boxes_to_draw` with
  draw_min_score and draw_duplicate_iou, defaults draw.MIN_SCORE and
  draw.DUPLICATE_IOU) and
  out/heatmaps/<name>.png, <name> unique per input
  (`unique_names`), and out/images.json: per input its id, file_name,
  number of detections and outputs (or the error that skipped it).

  A file that cannot be read, decoded or put on a canvas is named and
  skipped; the others go on. on_image(ok: bool) is called per input.
  Returns {"images", "records", "errors": {index: message}}.
  """
  from fcos_jax.inference import draw as draw_lib  # pylint: disable=import-outside-toplevel
  names = unique_names(paths)
  min_score = (draw_lib.MIN_SCORE if draw_min_score is None
               else draw_min_score)
  duplicate_iou = (draw_lib.DUPLICATE_IOU if draw_duplicate_iou is None
                   else draw_duplicate_iou)
  records, errors, entries = [], {}, []
  category_names = {c["id"]: c["name"] for c in det.categories}
  stream = det.predict_files(paths, heatmaps=heatmaps, exif=exif,
                             workers=workers, keep_images=draw or heatmaps)
  for i, (path, r) in enumerate(stream):
    entry = {"id": i, "file_name": str(path)}
    entries.append(entry)
    if isinstance(r, Exception):
      errors[i] = entry["error"] = str(r)
      if on_image:
        on_image(False)
      continue
    outputs = {}
    if draw:
      pic = draw_lib.draw_detections(r["image"], r["boxes"], r["scores"],
                                     r["labels"], r["names"],
                                     min_score=min_score,
                                     duplicate_iou=duplicate_iou)
      outputs["draw"] = posixpath.join("draw", names[i] + ".png")
      _save_png(pic, storage.join(out, outputs["draw"]))
    if heatmaps:
      pic = draw_lib.draw_heatmaps(r["image"], r["maps"], det.cfg.strides)
      outputs["heatmaps"] = posixpath.join("heatmaps", names[i] + ".png")
      _save_png(pic, storage.join(out, outputs["heatmaps"]))
    recs = det.to_coco([r], [i])
    for rec in recs:
      rec["category_name"] = category_names[rec["category_id"]]
      rec["file_name"] = str(path)
    records += recs
    entry["detections"] = len(recs)
    entry["outputs"] = outputs
    if on_image:
      on_image(True)
  storage.write_json_atomic(storage.join(out, "detections.json"), records)
  storage.write_json_atomic(storage.join(out, "images.json"), entries,
                            indent=1)
  return {"images": entries, "records": records, "errors": errors}
