"""A dataset's categories as label-ordered records, and the check that two
splits agree.

The training split fixes the labels: label i is the i-th category in
increasing id order. The run keeps that list (fcos_jax/run/categories.py);
evaluation, prediction and resuming refuse a dataset whose categories
differ, since a silent remap would score the wrong classes.
"""

from __future__ import annotations

from fcos_jax.data.coco_format import DatasetInfo
from fcos_jax.errors import DataError

def as_records(info: DatasetInfo) -> list[dict]:
  """[{"id", "name"}] in label order."""
  return [{"id": int(i), "name": str(n)} for i, n in
          zip(info.label_to_category_id, info.category_names)]


def check_categories(expected: list[dict], info: DatasetInfo, what: str,
                     expected_from: str) -> None:
  """DataError unless `info` has exactly the categories `expected` lists.

  what: the dataset being checked (e.g. its JSON path); expected_from:
  where `expected` comes from (e.g. WORKDIR/categories.json).
  """
  want = {int(c["id"]): str(c["name"]) for c in expected}
  have = dict(zip((int(i) for i in info.label_to_category_id),
                  info.category_names))
  if want == have:
    return
  only_want = sorted(set(want) - set(have))
  only_have = sorted(set(have) - set(want))
  renamed = sorted(i for i in set(want) & set(have) if want[i] != have[i])
  parts = []
  if only_want:
    parts.append(f"ids only in {expected_from}: {only_want}")
  if only_have:
    parts.append(f"ids only in {what}: {only_have}")
  if renamed:
    parts.append("same id, other name: " + ", ".join(
        f"{i} ({want[i]!r} vs {have[i]!r})" for i in renamed[:10]))
  raise DataError(
      f"{what}: its categories differ from those the model was trained on "
      f"({expected_from}): {'; '.join(parts)}. The labels would map to the "
      "wrong classes. Use annotations with the same 'categories' list as the "
      "training split (images and annotations may differ).")
