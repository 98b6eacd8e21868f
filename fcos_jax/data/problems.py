"""The skip log of the input pipeline (its error type is
`fcos_jax.errors.DataError`)."""

from __future__ import annotations

import logging

from fcos_jax.errors import DataError

log = logging.getLogger("fcos_jax.data")


class Problems:
  """Collects bad-input findings; raises on the first or counts and logs them.

  With `skip=False` (default) the first problem raises `DataError`. With
  `skip=True` problems are collected, the images they concern are dropped
  (each counted once, however many problems it has) and `report()` logs a
  summary.
  """

  FIX = ("Fix or remove it, or set data.skip_bad_examples=True to skip such "
         "examples (counted and logged).")

  def __init__(self, skip: bool, what: str):
    self.skip = skip
    self.what = what
    self.messages: list[str] = []
    self.dropped: set = set()  # Keys of the images dropped.
    self.stray = 0  # Records dropped that belong to no image.

  def add(self, message: str, images=()) -> None:
    """One problem; `images`: keys of the images it drops (none: only the
    record itself goes, e.g. an annotation of an image that isn't listed)."""
    if not self.skip:
      raise DataError(f"{self.what}: {message}. {self.FIX}")
    self.messages.append(message)
    images = list(images)
    self.dropped.update(images)
    self.stray += not images

  def report(self) -> None:
    if self.messages:
      shown = "; ".join(self.messages[:5])
      more = len(self.messages) - 5
      log.warning("%s: skipped %d bad image(s) and %d stray annotation(s) "
                  "(%d problem(s); data.skip_bad_examples=True): %s%s",
                  self.what, len(self.dropped), self.stray,
                  len(self.messages), shown,
                  f" (and {more} more)" if more > 0 else "")
