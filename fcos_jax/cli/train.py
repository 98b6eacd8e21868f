"""Train FCOS.

  fcos-train --config configs/synthetic_cpu.py --workdir /tmp/fcos_synth
  fcos-train --config configs/fcos_imprv_r50_1x.py --workdir gs://BUCKET/run1 \
      --config.data.tfds.data_dir=gs://BUCKET/tfds --config.global_batch_size=64

A run resumes by itself from the latest checkpoint in --workdir (a local
folder or a gs:// URL). SIGTERM/SIGINT stop every process at one agreed step
with a checkpoint. One process writes a workdir at a time (WORKDIR/lock.json
names it; a second train.py there is refused). Any config field can be overridden with
--config.FIELD=value; an unknown field or a value of the wrong type is
refused.
"""

from absl import app, flags, logging
from ml_collections import config_flags

from fcos_jax.cli import common

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "Path to an ml-collections config file.", lock_config=True)
flags.DEFINE_string("workdir", None,
                    "Directory (or gs:// URL) for checkpoints, logs, results.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  # The config checked before anything is set up or written.
  common.setup(FLAGS.config, needs=("train", "eval", "model"))
  from fcos_jax.train.loop import train_and_evaluate  # After jax is set up.
  metrics = train_and_evaluate(FLAGS.config, FLAGS.workdir)
  if metrics:
    logging.info("Final evaluation: %s.", ", ".join(
        f"{k} {v:.4f}" for k, v in list(metrics.items())[:3]))


def run():
  """The console script's entry point (fcos-train)."""
  common.run(main)


if __name__ == "__main__":
  run()
