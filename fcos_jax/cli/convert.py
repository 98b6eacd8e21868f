"""torchvision's, the official FCOS's, AdelaiDet's or mmdetection's (GFL,
VFNet, TOOD, ATSS) COCO weights -> a workdir that fcos-evaluate and fcos-predict
take like a trained run.

  fcos-convert --torchvision fcos_resnet50_fpn_coco-99b0c9b7.pth \
      --workdir runs/torchvision_coco [--config.data.tfds.data_dir=...]
  fcos-convert --official FCOS_imprv_R_50_FPN_1x.pth \
      --config configs/zoo.py:FCOS_imprv_R_50_FPN_1x \
      --workdir runs/official_r50 [--config.data.tfds.data_dir=...]
  fcos-convert --mmdet gfl_r50_fpn_1x_coco_20200629_121244-25944287.pth \
      --config configs/zoo.py:gfl_r50_fpn_1x_coco --workdir runs/gfl_r50
  fcos-evaluate --workdir runs/torchvision_coco    # COCO val2017 AP
  fcos-predict  --workdir runs/torchvision_coco --images photos/ --out /tmp/p

With --official, --adelaidet or --mmdet, --config names the released model
(configs/zoo.py:MODEL_NAME; fcos_jax.registry and docs/model_zoo.md list
them) and only its inference fields may be changed.

Writes WORKDIR/config.json (configs/torchvision_r50.py, or --config, with
any --config.FIELD overrides: set the data fields fcos-evaluate should use),
WORKDIR/categories.json (the 80 COCO categories; torchvision's 91 class
slots mapped by COCO category id) and WORKDIR/checkpoints/0 (the
parameters), built in a folder beside WORKDIR and moved in only once
complete: with --overwrite, a failed conversion leaves the old run as it
was. The workdir is locked meanwhile (WORKDIR/lock.json). Reading a .pth needs torch; the same state dict saved as .npz
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
    "classes, or with --official / --adelaidet / --mmdet "
    "configs/zoo.py:MODEL_NAME "
    "(only the inference fields may differ).", lock_config=True)
flags.DEFINE_string("torchvision", None,
                    "torchvision fcos_resnet50_fpn COCO state dict (.pth/.npz).")
flags.DEFINE_string("official", None,
                    "An official FCOS (tianzhi0549/FCOS) checkpoint (.pth, or "
                    "its 'model' state dict as .npz).")
flags.DEFINE_string("adelaidet", None,
                    "An AdelaiDet FCOS checkpoint (.pth, or its 'model' state "
                    "dict as .npz).")
flags.DEFINE_string("mmdet", None,
                    "An mmdetection GFL, VFNet, TOOD or ATSS checkpoint (.pth, or "
                    "its 'state_dict' as .npz).")
flags.DEFINE_string("workdir", None, "The workdir to write (local or URL).")
flags.DEFINE_bool("overwrite", False, "Replace a workdir that has checkpoints.")
flags.mark_flags_as_required(["workdir"])
SOURCES = ("official", "adelaidet", "mmdet", "torchvision")
flags.mark_flags_as_mutual_exclusive(list(SOURCES), required=True)

STEP = 0  # The step number of the converted checkpoint.


def _read_state_dict(state_dict, source: str):
  """The weights file read up front: one DataError naming it when it is
  no state dict (a bogus .npz, a truncated .pth), before anything is
  written. Mappings pass through."""
  import os  # pylint: disable=import-outside-toplevel
  if not isinstance(state_dict, (str, os.PathLike)):
    return state_dict
  import pickle  # pylint: disable=import-outside-toplevel
  import zipfile  # pylint: disable=import-outside-toplevel
  from fcos_jax import errors  # pylint: disable=import-outside-toplevel
  from fcos_jax.convert import mmdet, official  # pylint: disable=import-outside-toplevel
  from fcos_jax.convert import torchvision as tv  # pylint: disable=import-outside-toplevel
  path = os.fspath(state_dict)
  load = {"torchvision": tv.load_state_dict,
          "mmdet": mmdet.load_mmdet_state_dict}.get(
              source, official.load_official_state_dict)
  try:
    return load(path)
  except errors.UserError:
    raise
  except FileNotFoundError:
    raise errors.MissingFileError(
        f"--{source}={path}: no such file.") from None
  except ImportError:
    raise
  except (ValueError, OSError, EOFError, RuntimeError, KeyError,
          zipfile.BadZipFile, pickle.UnpicklingError) as e:
    kind = ("a NumPy .npz archive (np.savez)" if path.endswith(".npz") else
            "a PyTorch state dict (torch.save)")
    raise errors.DataError(
        f"--{source}={path}: cannot be read as {kind} ({type(e).__name__}); "
        "the file is damaged or of another format. Download it again, or "
        "save the state dict with np.savez / torch.save.") from None


def convert_to_workdir(state_dict, workdir: str, config, overwrite=False,
                       source="torchvision"):
  """Writes the converted run into `workdir`; returns its ModelConfig.

  source: "torchvision" (its 91-slot COCO FCOS), "official", "adelaidet"
  or "mmdet" (the released model of that zoo that config.model describes).
  The run is written into a new folder beside `workdir` and moved into
  place only once complete, so a failed conversion leaves the old run (with
  --overwrite) or nothing (without) behind. The workdir is locked while
  this runs (one writer at a time).
  """
  from fcos_jax import storage  # pylint: disable=import-outside-toplevel
  from fcos_jax.run import Run  # pylint: disable=import-outside-toplevel
  from fcos_jax.run.validate import validate  # pylint: disable=import-outside-toplevel
  validate(config, needs=("eval", "model"))
  run = Run(workdir)
  if run.has_checkpoints() and not overwrite:
    raise UserError(
        f"{run.checkpoints} already has checkpoints; pass --overwrite to "
        "replace them, or another --workdir.")
  state_dict = _read_state_dict(state_dict, source)
  storage.makedirs(run.workdir)
  with run.lock("fcos-convert"):
    if run.has_checkpoints() and not overwrite:  # Another writer meanwhile.
      raise UserError(
          f"{run.checkpoints} already has checkpoints; pass --overwrite to "
          "replace them, or another --workdir.")
    staging = _staging_dir(run.workdir)
    try:
      cfg = _write_converted(state_dict, Run(staging), config, source)
      _swap_in(staging, run)
    finally:
      if storage.exists(staging):
        storage.path(staging).rmtree()
  return cfg


def _staging_dir(workdir: str) -> str:
  """A new folder beside `workdir` (same file system / bucket)."""
  import uuid  # pylint: disable=import-outside-toplevel
  return f"{str(workdir).rstrip('/')}.converting-{uuid.uuid4().hex[:8]}"


# What a converted run consists of: these entries of the workdir are
# replaced by --overwrite; anything else there (e.g. the user's notes) stays.
_RUN_ENTRIES = ("checkpoints", "config.json", "categories.json", "eval")


def _swap_in(staging: str, run) -> None:
  """Moves the finished run from `staging` into `run.workdir`: the old run's
  entries are moved aside first and removed only once the new ones are in
  place; if a move fails they are put back (the new ones removed). On gs://
  a folder moves object by object, so a failed move can leave an entry half
  aside: everything aside is put back, object by object where needed, and
  the aside folder (with a README.txt saying what it is) is removed only
  when nothing of the old run is left in it."""
  from fcos_jax import storage  # pylint: disable=import-outside-toplevel
  aside = staging + ".old"
  # The note also makes the folder exist on gs:// (epath moves only into an
  # existing folder, and a gs:// folder exists by what it holds).
  storage.write_text_atomic(storage.join(aside, _ASIDE_NOTE), (
      f"fcos-convert --overwrite moved the old run's entries of "
      f"{run.workdir} here while the new run was moved in; it removes this "
      "folder once that is done. If it is still here, the swap was "
      "interrupted: these are the old run's files.\n"))
  old_records = [p for p in run.config_records()
                 if p.rsplit("/", 1)[-1] != "config.json"]
  moved_in = []
  try:
    for name in _RUN_ENTRIES + tuple(p.rsplit("/", 1)[-1]
                                     for p in old_records):
      src = storage.path(run.path(name))
      if src.exists():
        src.rename(storage.path(storage.join(aside, name)))
    for p in storage.path(staging).iterdir():
      moved_in.append(p.name)  # Before the move: a half move is ours too.
      p.rename(storage.path(run.path(p.name)))
  except BaseException:
    for name in moved_in:  # The new run's entries: ours to remove.
      dst = storage.path(run.path(name))
      if dst.exists():
        (dst.rmtree() if dst.is_dir() else dst.unlink())
    _put_back(aside, run)
    raise
  storage.path(aside).rmtree()


_ASIDE_NOTE = "README.txt"


def _put_back(aside: str, run) -> None:
  """Every entry under `aside` back into the workdir (whole where the
  workdir has none of it, else file by file); then `aside` is removed."""
  from fcos_jax import storage  # pylint: disable=import-outside-toplevel
  for entry in storage.path(aside).iterdir():
    if entry.name == _ASIDE_NOTE:
      continue
    dst = storage.path(run.path(entry.name))
    if not dst.exists():
      entry.rename(dst)
      continue
    files, folders = [], [entry]  # Half moved (gs://): file by file.
    while folders:
      for p in folders.pop().iterdir():
        (folders if p.is_dir() else files).append(p)
    for p in files:
      target = dst / p.relative_to(entry)
      target.parent.mkdir(parents=True, exist_ok=True)
      target.write_bytes(p.read_bytes())
      p.unlink()
  storage.path(aside).rmtree()


def _write_converted(state_dict, run, config, source):
  """Converts `state_dict` into the (new, empty) run directory `run`."""
  import jax  # pylint: disable=import-outside-toplevel
  from fcos_jax.convert import torchvision as tv  # pylint: disable=import-outside-toplevel
  from fcos_jax import storage  # pylint: disable=import-outside-toplevel
  from fcos_jax.run import checkpoint  # pylint: disable=import-outside-toplevel
  from fcos_jax.model.config_dict import model_config_from  # pylint: disable=import-outside-toplevel

  cfg = model_config_from(config.model)
  from fcos_jax.convert import official  # pylint: disable=import-outside-toplevel
  inference = official.inference_fields(cfg)  # What a converted run may set.
  if source in ("official", "adelaidet", "mmdet"):
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
  storage.makedirs(run.workdir)
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
  common.setup(config, needs=("eval", "model"))
  source = next(s for s in SOURCES if getattr(FLAGS, s))
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
