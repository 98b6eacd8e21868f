"""Metric writers (clu) and the honest progress report of the train loop.

`create_writer`: console on every process, TensorBoard event files in
WORKDIR/tensorboard on the chief (clu's default writer). TensorFlow writes
event files through its own filesystem; where it cannot reach the workdir
(a gs:// bucket while etils.epath goes through gcsfs, e.g. the GCS
emulator), the events are written to a local staging folder and copied into
the workdir through `fcos_jax.storage` at every flush, as TensorFlow's own
GCS client would re-upload them.

`TrainProgress`: clu's ReportProgress, with images/s and the ETA computed
over train steps only: the time of its `timed(...)` sections (compile,
evaluation, checkpointing) is left out.

`StepTrace`: clu's Profile, once: a jax.profiler trace of a few train steps
in WORKDIR/tensorboard/plugins/profile/<run>/, where TensorBoard's profile
plugin lists it.
"""

from __future__ import annotations

import datetime
import logging
import os
import shutil
import tempfile

import jax
from clu import metric_writers, periodic_actions

from fcos_jax import storage


class _MirroredWriter(metric_writers.MultiWriter):
  """Writes to a local folder and mirrors it into `target` on flush."""

  def __init__(self, writers, local_dir: str, target: str):
    super().__init__(writers)
    self._local, self._target = local_dir, target

  def flush(self):
    super().flush()
    for name in os.listdir(self._local):
      with open(os.path.join(self._local, name), "rb") as f:
        storage.write_bytes_atomic(storage.join(self._target, name), f.read())

  def close(self):
    super().close()
    self.flush()
    shutil.rmtree(self._local, ignore_errors=True)


def create_writer(logdir: str, is_chief: bool) -> metric_writers.MetricWriter:
  if not is_chief:
    return metric_writers.create_default_writer(just_logging=True,
                                                asynchronous=False)
  if storage.tf_reaches(logdir):
    return metric_writers.create_default_writer(logdir, asynchronous=False)
  local = tempfile.mkdtemp(prefix="fcos_jax_tensorboard_")
  return _MirroredWriter(
      [metric_writers.LoggingWriter(), metric_writers.SummaryWriter(local)],
      local, logdir)


class TrainProgress(periodic_actions.ReportProgress):
  """Steps/s, images/s and ETA over the train steps alone, every N steps."""

  def __init__(self, *, num_train_steps: int, global_batch_size: int,
               every_steps: int, writer, start_step: int):
    super().__init__(num_train_steps=num_train_steps, writer=None,
                     every_steps=every_steps, every_secs=None)
    self._metric_writer = writer
    self._batch = global_batch_size
    self._start_step = start_step
    self._parts_at_last = 0.0
    self.last = {}

  def timed(self, name: str):
    return super().timed(name, wait_jax_async_dispatch=False)

  def _apply(self, step: int, t: float):
    parts = sum(self._time_per_part.values())
    train_s = (t - self._previous_time) - (parts - self._parts_at_last)
    self._parts_at_last = parts
    steps_per_s = (step - self._previous_step) / max(train_s, 1e-9)
    eta = (self._num_train_steps - step) / steps_per_s
    self.last = {"steps_per_s": steps_per_s,
                 "images_per_s": steps_per_s * self._batch, "eta_s": eta}
    self._metric_writer.write_scalars(
        step, {"steps_per_s": steps_per_s,
               "images_per_s": steps_per_s * self._batch})
    breakdown = ", ".join(f"{name} {dt:.1f} s" for name, dt in
                          sorted(self._time_per_part.items()))
    logging.info("step %d/%d: %.1f images/s over train steps, ETA %s%s", step,
                 self._num_train_steps, steps_per_s * self._batch,
                 datetime.timedelta(seconds=int(eta)),
                 f" (outside train steps so far: {breakdown})" if breakdown
                 else "")


class StepTrace(periodic_actions.Profile):
  """Traces train steps first_step + 1 .. first_step + num_steps, once."""

  def __init__(self, logdir: str, first_step: int, num_steps: int):
    super().__init__(logdir=logdir, num_profile_steps=num_steps,
                     profile_duration_ms=0, first_profile=first_step,
                     every_steps=None, every_secs=None)

  def _start_session(self):
    super()._start_session()
    if self._session_running:
      logging.info("Profiling %d train steps into %s.",
                   self._num_profile_steps, self._logdir)

  def close(self):
    """Ends a trace the run outlived (it stopped before the last step)."""
    if self._session_running:
      jax.profiler.stop_trace()
      self._session_running = False
