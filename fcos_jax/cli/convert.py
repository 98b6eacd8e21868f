"""torchvision's or the official FCOS's COCO weights -> a workdir that
fcos-evaluate and fcos-predict take like a trained run.

  fcos-convert --torchvision fcos_resnet50_fpn_coco-99b0c9b7.pth \
      --workdir runs/torchvision_coco [--config.data.tfds.data_dir=...]
  fcos-convert --official FCOS_imprv_R_50_FPN_1x.pth \
      --config configs/zoo.py:FCOS_imprv_R_50_FPN_1x \
      --workdir runs/official_r50 [--config.data.tfds.data_dir=...]
  fcos-evaluate --workdir runs/torchvision_coco    # COCO val2017 AP
  fcos-predict  --workdir runs/torchvision_coco --images photos/ --out /tmp/p

With --official or --adelaidet, --config names the released model
(configs/zoo.py:MODEL_NAME; fcos_jax.registry and docs/model_zoo.md list
them) and only its inference fields may be changed.

Writes WORKDIR/config.json (configs/torchvision_r50.py, or --config, with
any --config.FIELD overrides: set the data fields fcos-evaluate should use),
WORKDIR/categories.json (the 80 COCO categories; torchvision's 91 class
slots mapped by COCO category id) and WORKDIR/checkpoints/0 (the
parameters). Reading a .pth needs torch; the same state dict saved as .npz
does not.
"""

import os

from absl import app, flags, logging
from ml_collections import config_flags

from fcos_jax.cli import common
from fcos_jax.errors import ConfigError, UserError

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", os.path.join(common.packaged_configs_dir(), "torchvision_r50.py"),
    "Run config to record; its model must be the torchvision preset with 80 "
    "classes, or with --official / --adelaidet configs/zoo.py:MODEL_NAME "
    "(only the inference fields may differ).", lock_config=True)
flags.DEFINE_string("torchvision", None,
                    "torchvision fcos_resnet50_fpn COCO state dict (.pth/.npz).")
flags.DEFINE_string("official", None,
                    "An official FCOS (tianzhi0549/FCOS) checkpoint (.pth, or "
                    "its 'model' state dict as .npz).")
flags.DEFINE_string("adelaidet", None,
                    "An AdelaiDet FCOS checkpoint (.pth, or its 'model' state "
                    "dict as .npz).")
flags.DEFINE_string("workdir", None, "The workdir to write (local or URL).")
flags.DEFINE_bool("overwrite", False, "Replace a workdir that has checkpoints.")
flags.mark_flags_as_required(["workdir"])
flags.mark_flags_as_mutual_exclusive(["torchvision", "official", "adelaidet"],
                                     required=True)

STEP = 0  # The step number of the converted checkpoint.


def convert_to_workdir(state_dict, workdir: str, config, overwrite=False,
                       source="torchvision"):
  """Writes the converted run into `workdir`; returns its ModelConfig.

  source: "torchvision" (its 91-slot COCO FCOS), "official" or "adelaidet"
  (the released model of that zoo that config.model describes).
  """
  import jax  # pylint: disable=import-outside-toplevel
  from fcos_jax.convert import torchvision as tv  # pylint: disable=import-outside-toplevel
  from fcos_jax import storage  # pylint: disable=import-outside-toplevel
  from fcos_jax.run import Run, checkpoint  # pylint: disable=import-outside-toplevel
  from fcos_jax.model.config_dict import model_config_from  # pylint: disable=import-outside-toplevel

  cfg = model_config_from(config.model)
  run = Run(workdir)
  if run.has_checkpoints():
    if not overwrite:
      raise UserError(
          f"{run.checkpoints} already has checkpoints; pass --overwrite to "
          "replace them, or another --workdir.")
    storage.path(run.checkpoints).rmtree()
  from fcos_jax.convert import official  # pylint: disable=import-outside-toplevel
  inference = official.inference_fields(cfg)  # What a converted run may set.
  if source in ("official", "adelaidet"):
    import importlib  # pylint: disable=import-outside-toplevel
    zoo = importlib.import_module(f"fcos_jax.convert.{source}")
    tv_cfg, params, categories = zoo.convert_published(
        state_dict, zoo.find_published(cfg), **inference)
  else:
    tv_cfg, params, categories = tv.convert_coco_detector(
        state_dict, **inference)
  if cfg != tv_cfg:
    import dataclasses  # pylint: disable=import-outside-toplevel
    bad = [f"{f.name}={getattr(cfg, f.name)!r} (needs "
           f"{getattr(tv_cfg, f.name)!r})" for f in dataclasses.fields(cfg)
           if getattr(cfg, f.name) != getattr(tv_cfg, f.name)]
    raise ConfigError(
        "config.model does not describe torchvision's COCO FCOS: " +
        "; ".join(bad) + ". Use configs/torchvision_r50.py (only the "
        "inference fields may change).")
  storage.makedirs(workdir)
  run.write_config(config)
  run.write_categories(categories)
  manager = run.checkpoint_manager(keep=1, async_save=False)
  params = jax.tree.map(jax.numpy.asarray, params)
  checkpoint.save(manager, STEP, {"params": params, "step": STEP},
                  {"step": STEP})
  manager.wait_until_finished()
  manager.close()
  return cfg


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  config = FLAGS.config
  common.setup(config)
  source = next(s for s in ("official", "adelaidet", "torchvision")
                if getattr(FLAGS, s))
  convert_to_workdir(getattr(FLAGS, source), FLAGS.workdir, config,
                     overwrite=FLAGS.overwrite, source=source)
  logging.info("Wrote %s: 80 COCO categories, checkpoint step %d. Evaluate "
               "with: fcos-evaluate --workdir %s", FLAGS.workdir, STEP,
               FLAGS.workdir)


def run():
  """The console script's entry point (fcos-convert)."""
  common.run(main)


if __name__ == "__main__":
  run()
