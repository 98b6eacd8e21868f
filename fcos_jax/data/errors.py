"""The one error type of the input pipeline, and the skip log."""

from __future__ import annotations

import logging

log = logging.getLogger("fcos_jax.data")


class DataError(ValueError):
  """Bad input data: the message names the file or annotation and the fix."""


class Problems:
  """Collects bad-input findings; raises on the first or counts and logs them.

  With `skip=False` (default) the first problem raises `DataError`. With
  `skip=True` problems are counted and a summary is logged by `report()`.
  """

  FIX = ("Fix or remove it, or set data.skip_bad_examples=True to skip such "
         "examples (counted and logged).")

  def __init__(self, skip: bool, what: str):
    self.skip = skip
    self.what = what
    self.messages: list[str] = []

  def add(self, message: str) -> None:
    if not self.skip:
      raise DataError(f"{self.what}: {message}. {self.FIX}")
    self.messages.append(message)

  def report(self) -> None:
    if self.messages:
      shown = "; ".join(self.messages[:5])
      more = len(self.messages) - 5
      log.warning("%s: skipped %d bad example(s)/annotation(s): %s%s",
                  self.what, len(self.messages), shown,
                  f" (and {more} more)" if more > 0 else "")
