"""One entry point over the three sources: (ExampleTable, DatasetInfo)."""

from __future__ import annotations

from fcos_jax.data.coco_format import DatasetInfo, ExampleTable, load_coco_split
from fcos_jax.data.errors import DataError

SOURCES = ("synthetic", "coco_format", "tfds")


def split_files(data_cfg, split: str) -> tuple[str, str, str]:
  """(annotations json, image folder, ground-truth json) of a split.

  split: "train" or "val". Makes the synthetic set / the TFDS export on
  first use.
  """
  if split not in ("train", "val"):
    raise ValueError(f"split={split!r}: must be 'train' or 'val'.")
  if data_cfg.source == "synthetic":
    from fcos_jax.data.synthetic import ensure_synthetic_dataset
    s = data_cfg.synthetic
    files = ensure_synthetic_dataset(
        s.dir, num_train=s.num_train, num_val=s.num_val,
        image_size=s.image_size, seed=s.seed)
    return files[f"{split}_json"], files[f"{split}_images"], files[
        f"{split}_json"]
  if data_cfg.source == "coco_format":
    js, im = data_cfg.coco[f"{split}_json"], data_cfg.coco[f"{split}_images"]
    if not js or not im:
      raise DataError(f"data.source='coco_format' needs data.coco.{split}_json "
                      f"and data.coco.{split}_images (got {js!r}, {im!r}).")
    return js, im, js
  if data_cfg.source == "tfds":
    from fcos_jax.data.tfds_coco import export_tfds_split
    t = data_cfg.tfds
    js, im = export_tfds_split(
        t.name, t.train_split if split == "train" else t.val_split,
        data_dir=t.data_dir or None, export_dir=t.export_dir or None)
    gt = t.val_gt_json if split == "val" and t.val_gt_json else js
    return js, im, gt
  raise DataError(f"data.source={data_cfg.source!r}: must be one of {SOURCES}.")


def load_split(data_cfg, split: str) -> tuple[ExampleTable, DatasetInfo]:
  """The example table and DatasetInfo of a split of the configured source."""
  js, im, gt = split_files(data_cfg, split)
  table, info = load_coco_split(js, im, skip_bad=bool(data_cfg.skip_bad_examples))
  return table, DatasetInfo(info.num_classes, info.label_to_category_id,
                            info.category_names, gt)
