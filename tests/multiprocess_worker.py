"""fcos-train (fcos_jax.cli.train) with two test hooks on the input pipeline, for tests/test_scale_out.py.

  python tests/multiprocess_worker.py --config ... --workdir ... \
      [--record_ids] [--emulate_processes K] [--config.FIELD=value ...]

--record_ids: writes the image ids of every training batch this process read
  to WORKDIR/train_ids_process{P}.json (to show each process reads only its
  own slice).
--emulate_processes K: a single process reads the data of K processes (the
  slices of processes 0..K-1 of K, concatenated in process order), i.e. the
  global batch a K-process run assembles. A one-process run fed this way
  must end with the parameters of the K-process run.

Everything else is fcos-train itself: the same flags, set-up and
`train_and_evaluate`.
"""

import json
import os
import sys

from absl import app, flags, logging

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from fcos_jax.cli import train  # noqa: E402  (defines --config and --workdir)

flags.DEFINE_bool("record_ids", False, "Record the training image ids read.")
flags.DEFINE_integer("emulate_processes", 1,
                     "Read the data of this many processes in one.")
FLAGS = flags.FLAGS


class _Recorder:
  """Passes batches through, appending their valid image ids to a file."""

  def __init__(self, it, path):
    self._it, self._path, self._ids = it, path, []

  def __iter__(self):
    return self

  def __next__(self):
    batch = next(self._it)
    self._ids.append(batch["image_id"][batch["example_valid"]].tolist())
    with open(self._path, "w") as f:
      json.dump(self._ids, f)
    return batch


class _Concat:
  """Zips the iterators of K emulated processes into one batch."""

  def __init__(self, its):
    self._its = its

  def __iter__(self):
    return self

  def __next__(self):
    import numpy as np
    parts = [next(it) for it in self._its]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def main(argv):
  from fcos_jax.data import pipeline
  build = pipeline.build_train_dataset

  def hooked(data_cfg, process_batch_size, process_index, process_count,
             seed=None, start_step=0, split=None):
    k = FLAGS.emulate_processes
    if k > 1:
      assert process_count == 1, "emulation is for a single process"
      its = [build(data_cfg, process_batch_size // k, p, k, seed, start_step,
                   split=split) for p in range(k)]
      it = _Concat(its)
    else:
      it = build(data_cfg, process_batch_size, process_index, process_count,
                 seed, start_step, split=split)
    if FLAGS.record_ids:
      path = os.path.join(FLAGS.workdir, f"train_ids_process{process_index}.json")
      it = _Recorder(iter(it), path)
    return it

  pipeline.build_train_dataset = hooked
  train.main(argv)
  logging.info("multiprocess_worker: done.")


if __name__ == "__main__":
  app.run(main)
