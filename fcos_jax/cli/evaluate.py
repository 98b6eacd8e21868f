"""Evaluate an FCOS checkpoint with COCO AP.

  fcos-evaluate --workdir /tmp/fcos_synth     # the run's own config.json
  fcos-evaluate --config configs/synthetic_cpu.py --workdir /tmp/fcos_synth
  fcos-evaluate --config ... --workdir ... --checkpoint 5000
  fcos-evaluate --config ... --workdir ... --checkpoint /path/to/checkpoints/5000

Prints the standard 12-number COCO table and writes detections (COCO results
format) and metrics (JSON) to --out, or to WORKDIR/eval: under the run's own
names (eval/metrics_stepN.json) only with the recorded config and when
training wrote none for that step, otherwise in
eval/<val json stem>_stepN_<config hash>/, so training's results are never
overwritten. A class-agnostic model (the
`rpn` preset) is scored as proposals instead: AR@100/300/1000 and
small/medium/large @1000 (pycocotools, useCats=0). Only the parameters are
restored (read-only), so the optimizer fields of the config do not matter.
Without --config, the run's recorded config (WORKDIR/config.json, latest) is
used. --tta=cheap|official evaluates with test-time augmentation (config.tta;
one process).
"""

from absl import app, flags

from fcos_jax.cli import common

FLAGS = flags.FLAGS
common.define_trained_run_flags(
    "Run directory or gs:// URL (its checkpoints/ are used).")
flags.DEFINE_string("out", None, "Folder (or gs:// URL) for the detections "
                    "and metrics; default: under WORKDIR/eval.")
flags.DEFINE_enum("tta", None, ["none", "cheap", "official"],
                  "Test-time augmentation: 'cheap' (the run's scale and "
                  "1.25x, flipped: 4 passes), 'official' (FCOS's 400..1200 "
                  "by 100, max 2000, flipped: 18 passes) or 'none'; default: "
                  "the config's tta fields (off).")
flags.mark_flags_as_required(["workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  config = FLAGS.config or common.recorded_config(FLAGS.workdir)
  common.setup(config, needs=("eval", "model"))
  if FLAGS.tta:
    from fcos_jax.inference import tta  # pylint: disable=import-outside-toplevel
    tta.apply_to_config(config, FLAGS.tta)
  from fcos_jax.evaluation.evaluate_checkpoint import evaluate_checkpoint
  evaluate_checkpoint(config, FLAGS.workdir, FLAGS.checkpoint, out=FLAGS.out)


def run():
  """The console script's entry point (fcos-evaluate)."""
  common.run(main, overrides_change_recorded=True)


if __name__ == "__main__":
  run()
