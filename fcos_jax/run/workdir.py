"""`Run(workdir)`: the one home of a run directory's layout.

  WORKDIR/
    config.json, config.<UTC>.json   the config of every start (record.py)
    categories.json                  the training split's categories
    checkpoints/<step>/              orbax checkpoints (checkpoint.py)
    checkpoints_damaged/<step>/      damaged ones a resume skipped (kept)
    eval/                            evaluate.py's detections and metrics
    tensorboard/                     TensorBoard events and profiles
    analysis/                        analyze.py's default output
    lock.json                        the live writer (lock.py), while it runs

train.py, evaluate.py, predict.py, analyze.py, the converters, the exporter
and `fcos_jax.Detector` all reach these files through a `Run`; nothing else
joins these names by hand. WORKDIR may be a local folder or a URL
(gs://bucket/run).
"""

from __future__ import annotations

import os

import jax
import ml_collections

from fcos_jax import runtime, storage
from fcos_jax.errors import ConfigError, MissingFileError, WorkdirError
from fcos_jax.model.fcos import init_variables
from fcos_jax.run import categories as categories_lib
from fcos_jax.run import checkpoint, record
from fcos_jax.run import lock as lock_lib


class Run:
  """A run directory (local path or URL) and what it holds."""

  CHECKPOINTS = "checkpoints"
  EVAL = "eval"
  TENSORBOARD = "tensorboard"
  ANALYSIS = "analysis"

  def __init__(self, workdir: str):
    """workdir: a local folder (relative to the current one, `~` expanded:
    made absolute here, as orbax writes only to absolute paths) or a URL."""
    workdir = str(workdir).strip() if workdir is not None else ""
    if not workdir:
      raise WorkdirError(
          f"--workdir={workdir!r} is empty: give a folder (e.g. "
          "--workdir=runs/my_run) or a gs:// URL; the current folder is "
          "never taken for a run.")
    if not storage.is_url(workdir):
      workdir = os.path.abspath(os.path.expanduser(workdir))
    self.workdir = workdir

  def __repr__(self) -> str:
    return f"Run({self.workdir!r})"

  # --- Layout ---------------------------------------------------------------

  def path(self, *names: str) -> str:
    """WORKDIR/name/...: a path inside the run."""
    return storage.join(self.workdir, *names)

  @property
  def checkpoints(self) -> str:
    return self.path(self.CHECKPOINTS)

  @property
  def damaged_checkpoints(self) -> str:
    """Where a resumed training run moves damaged checkpoints it skipped."""
    return self.path(self.CHECKPOINTS + "_damaged")

  @property
  def eval_dir(self) -> str:
    return self.path(self.EVAL)

  @property
  def tensorboard(self) -> str:
    return self.path(self.TENSORBOARD)

  @property
  def analysis_dir(self) -> str:
    return self.path(self.ANALYSIS)

  @property
  def categories_file(self) -> str:
    return self.path(categories_lib.FILE)

  @property
  def lock_file(self) -> str:
    return self.path(lock_lib.FILE)

  # --- One writer at a time -----------------------------------------------------

  def lock(self, command: str, **options) -> lock_lib.WorkdirLock:
    """The workdir's writer lock (a context manager; see lock.py): entering
    it takes the lock or raises WorkdirLockedError naming the holder."""
    return lock_lib.WorkdirLock(self.workdir, command, **options)

  # --- Where evaluate.py writes -------------------------------------------------

  def evaluation_dir(self, config, step: int, val_json: str) -> str:
    """Where fcos-evaluate writes detections/metrics of `step`: the run's
    own eval/ (eval/metrics_stepN.json) when that step has no metrics
    there yet and `config` has the recorded model and data fields (or the
    workdir records none: e.g. another run's checkpoint evaluated into a
    new folder); otherwise eval/<val json stem>_step<N>_<8 hex of the model
    and data fields>/, a name that cannot collide with training's files."""
    recorded = self.read_config()
    plain = record.as_plain(config)
    same = recorded is None or all(
        record.as_plain(recorded).get(k) == plain.get(k)
        for k in ("model", "data"))
    if same and not storage.exists(
        storage.join(self.eval_dir, f"metrics_step{step}.json")):
      return self.eval_dir
    import hashlib  # pylint: disable=import-outside-toplevel
    import json  # pylint: disable=import-outside-toplevel
    digest = hashlib.sha256(json.dumps(
        {k: plain.get(k) for k in ("model", "data")},
        sort_keys=True).encode()).hexdigest()[:8]
    stem = storage.path(val_json).name
    stem = stem[:-5] if stem.endswith(".json") else stem
    return self.path(self.EVAL, f"{stem}_step{step}_{digest}")

  # --- The config record and the resume policy -------------------------------

  def config_records(self) -> list[str]:
    """Paths of the recorded configs, oldest first."""
    return record.records(self.workdir)

  def read_config(self) -> ml_collections.ConfigDict | None:
    """The latest recorded config, or None when the run has none."""
    return record.read_config(self.workdir)

  def recorded_config(self) -> ml_collections.ConfigDict:
    """The latest recorded config; MissingFileError when there is none."""
    config = self.read_config()
    if config is None:
      raise MissingFileError(
          f"{self.workdir} has no config.json (not a train.py or fcos-convert "
          "workdir?): pass --config, or the --workdir of a run.")
    return config

  def write_config(self, config) -> str:
    """Adds this start's config to the record; returns the path written."""
    return record.write(self.workdir, config)

  def check_resume(self, config) -> list[str]:
    """Compares `config` with the latest record (see record.check_resume);
    returns the fields changed under allow_config_change."""
    paths = self.config_records()
    if not paths:
      return []
    return record.check_resume(storage.read_json(paths[-1]), config, paths[-1])

  # --- Categories -------------------------------------------------------------

  def read_categories(self) -> list[dict] | None:
    return categories_lib.read_categories(self.workdir)

  def require_categories(self) -> list[dict]:
    """The run's [{"id", "name"}] in label order; MissingFileError if absent."""
    saved = self.read_categories()
    if saved is None:
      raise MissingFileError(
          f"{self.categories_file} is missing: it records the training "
          "split's categories (written with the first checkpoint by train.py "
          "or by fcos-convert). Restore it, or use the workdir of the run.")
    return saved

  def write_categories(self, categories) -> None:
    """categories: a DatasetInfo, or [{"id", "name"}] in label order."""
    categories_lib.write_categories(self.workdir, categories)

  # --- Checkpoints ------------------------------------------------------------

  def checkpoint_manager(self, **options):
    """An orbax manager over WORKDIR/checkpoints (checkpoint.make_manager)."""
    return checkpoint.make_manager(self.checkpoints, **options)

  def has_checkpoints(self) -> bool:
    d = storage.path(self.checkpoints)
    return d.exists() and any(d.iterdir())

  def locate(self, which: str | int | None = None) -> tuple["Run", int | None]:
    """(the run that holds the checkpoint, step or None = latest).

    which: None (latest of this run), a step number, or a checkpoint
    directory named by its step (e.g. OTHER_RUN/checkpoints/5000), whose
    run then provides the categories.
    """
    if which is None or str(which).isdigit():
      return self, (None if which is None else int(which))
    p = str(which).rstrip("/")
    name = p.rsplit("/", 1)[-1]
    if not name.isdigit() or not storage.exists(p):
      raise MissingFileError(
          f"--checkpoint={which}: expected a step number or a checkpoint "
          "directory named by its step (e.g. WORKDIR/checkpoints/5000).")
    folder = storage.path(p).parent
    if folder.name != self.CHECKPOINTS:
      raise ConfigError(
          f"--checkpoint={which}: a checkpoint directory lies in a run's "
          f"{self.CHECKPOINTS}/ folder (e.g. WORKDIR/checkpoints/5000).")
    return Run(str(folder.parent)), int(name)

  def restore_params(self, cfg, which=None, *, canvas_hw, mesh=None):
    """(params, step, categories) of a checkpoint of this run.

    Only the parameters are read, by a read-only manager: nothing is
    written, and any optimizer settings do. cfg: the run's ModelConfig;
    canvas_hw: a canvas to trace the parameter shapes with; mesh: where the
    parameters go, replicated (default: all devices). which: see `locate`.
    """
    owner, step = self.locate(which)
    categories = owner.require_categories()
    mesh = mesh or runtime.make_mesh()
    params, step = checkpoint.restore_params(
        owner.checkpoints, step, abstract_params(cfg, canvas_hw, mesh))
    return params, step, categories


def abstract_params(cfg, canvas_hw, mesh):
  """ShapeDtypeStructs of the parameters of `cfg`, replicated over `mesh`."""
  shapes = jax.eval_shape(
      lambda: init_variables(cfg, jax.random.key(0), tuple(canvas_hw)))["params"]
  return checkpoint.abstract_like(shapes, runtime.replicated(mesh))
