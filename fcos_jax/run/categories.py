"""WORKDIR/categories.json: the training split's categories, in label order.

Written when the first start has worked (train.py: first batch built,
step compiled) or by a converter; read by
evaluation, prediction, analysis and resuming.
"""

from __future__ import annotations

from fcos_jax import storage
from fcos_jax.data.categories import as_records

FILE = "categories.json"


def write_categories(workdir: str, categories) -> None:
  """categories: a DatasetInfo, or [{"id", "name"}] in label order."""
  if not isinstance(categories, list):
    categories = as_records(categories)
  storage.write_json_atomic(storage.join(workdir, FILE),
                            {"categories": categories}, indent=1)


def read_categories(workdir: str) -> list[dict] | None:
  """The saved [{"id", "name"}] in label order, or None if there is none."""
  p = storage.join(workdir, FILE)
  if not storage.exists(p):
    return None
  return list(storage.read_json(p)["categories"])
