"""Training metrics to the console and to TensorBoard event files."""

from __future__ import annotations

import datetime
import logging
import os


class MetricsWriter:
  """Writes scalars to `workdir/tensorboard` (chief only) and logs a line."""

  def __init__(self, workdir: str, enabled: bool = True):
    self._writer = None
    if enabled:
      import tensorflow as tf  # The event-file writer; TF is a dependency.
      tf.config.set_visible_devices([], "GPU")
      self._tf = tf
      self._writer = tf.summary.create_file_writer(
          os.path.join(workdir, "tensorboard"))

  def write(self, step: int, scalars: dict, eta_s: float | None = None,
            total: int | None = None) -> None:
    parts = [f"step {step}" + (f"/{total}" if total else "")]
    for k, v in scalars.items():
      parts.append(f"{k} {v:.4g}")
    if eta_s is not None:
      parts.append(f"ETA {datetime.timedelta(seconds=int(eta_s))}")
    logging.info(" | ".join(parts))
    if self._writer is not None:
      with self._writer.as_default(step=step):
        for k, v in scalars.items():
          self._tf.summary.scalar(k, v)
      self._writer.flush()

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()
