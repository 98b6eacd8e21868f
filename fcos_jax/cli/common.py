"""What the commands share: logging and process set-up, flag parsing
(--config by path or packaged name, --version) and the error policy."""

from __future__ import annotations

import logging as py_logging
import os
import re
import sys
import threading

from absl import app, flags, logging

# absl's --verbosity (-v) from which the libraries' chatter that the
# commands hide by default shows again (1: DEBUG).
VERBOSE = 1


def argv_verbosity(argv) -> int:
  """--verbosity / -v as given in `argv` (0 when not): read before the flags
  are parsed, for what must be set before TensorFlow is imported."""
  value = 0
  for i, arg in enumerate(argv[1:], 1):
    if arg == "--":
      break
    m = re.fullmatch(r"--?(?:verbosity|v)(?:=(.*))?", arg)
    if m:
      given = m.group(1) if m.group(1) is not None else (
          argv[i + 1] if i + 1 < len(argv) else "")
      try:
        value = int(given)
      except ValueError:
        pass  # absl's parser names the bad value.
  return value


def quiet_native_logs(argv=None) -> None:
  """TensorFlow's start-up lines off ("oneDNN custom operations are on",
  CPU features): environment variables that TF reads when it loads, so
  this runs when this module is imported, before a command imports TF
  (which only feeds data here: oneDNN's kernels are for its math, which the
  input pipeline hardly uses). --verbosity=1, or the variables set by the
  user, keep them."""
  if argv_verbosity(sys.argv if argv is None else argv) >= VERBOSE:
    return
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")


quiet_native_logs()

# Libraries whose INFO chatter is not the user's business (warnings show),
# by the name of their Python logger. faster-coco-eval logs its own copy of
# the COCO table (we print it once); jax2onnx its conversion steps.
_QUIET_LOGGERS = ("jax", "orbax", "etils", "gcsfs", "fsspec", "google",
                  "urllib3", "faster_coco_eval", "jax2onnx", "matplotlib")
# Libraries that log through absl's or the root logger, known by their
# installed folder (_QuietPackages).
_QUIET_PACKAGES = ("orbax.checkpoint", "jax2onnx")
# Libraries whose warnings are noise here too: onnx_ir warns for each
# intermediate value jax2onnx leaves untyped ("Skipping serialization").
_SILENT_LOGGERS = ("onnx_ir",)
# orbax warns that a run opened for reading is read-only (what evaluate,
# predict and export ask for).
_READ_ONLY = re.compile(r"read[ _]only", re.IGNORECASE)


def _package_dirs(packages) -> tuple[str, ...]:
  """The installed folders of the packages named (none for one that is not
  installed), without importing them."""
  import importlib.util  # pylint: disable=import-outside-toplevel
  dirs = []
  for name in packages:
    try:
      spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
      continue
    if spec is not None and spec.submodule_search_locations:
      dirs += [os.path.join(d, "") for d in spec.submodule_search_locations]
  return tuple(dirs)


class _QuietPackages(py_logging.Filter):
  """For records of the "absl" (or root) logger that come from the packages
  named: drops INFO and orbax's read-only warnings, and keeps errors to
  their one-line message (the loop re-raises the cause as one clear error,
  and a background thread's traceback would bury it).

  Needed for orbax, which logs through absl's logger, as clu's metric
  writer and our own lines do, and jax2onnx, which logs through the root
  logger: the logger name cannot tell them apart, the source file can (the
  installed package's folder, not a path pattern, so a checkout under any
  folder name keeps its INFO lines).
  """

  def __init__(self, packages):
    super().__init__()
    self._dirs = _package_dirs(packages)

  def filter(self, record):
    if not record.pathname.startswith(self._dirs):
      return True
    if record.levelno < py_logging.WARNING:
      return False
    if (record.levelno == py_logging.WARNING and
        _READ_ONLY.search(str(record.msg))):
      return False
    record.exc_info, record.exc_text, record.stack_info = None, None, None
    return True


def verbose() -> bool:
  """--verbosity=1 or more: the libraries' logs as they come."""
  return logging.get_verbosity() >= VERBOSE


def configure_logging() -> None:
  """INFO for the run's own lines, WARNING and up for the libraries' (less
  their known noise); with --verbosity=1 or more, everything."""
  if not verbose():
    logging.set_verbosity(logging.INFO)
    for name in _QUIET_LOGGERS:
      py_logging.getLogger(name).setLevel(py_logging.WARNING)
    for name in _SILENT_LOGGERS:
      py_logging.getLogger(name).setLevel(py_logging.ERROR)
    # orbax logs through absl's logger, jax2onnx through the root logger.
    quiet = _QuietPackages(_QUIET_PACKAGES)
    for logger in (py_logging.getLogger("absl"), py_logging.getLogger()):
      if not any(isinstance(f, _QuietPackages) for f in logger.filters):
        logger.addFilter(quiet)
  # Only orbax's background tasks run on asyncio here; a failed one is
  # re-raised by the loop as one error, not as "Task exception was never
  # retrieved" and its traceback.
  py_logging.getLogger("asyncio").setLevel(py_logging.CRITICAL)
  sys.unraisablehook = _without_closed_loop_noise(sys.unraisablehook)


def setup(config, *, needs) -> None:
  """The start-up of every command that reads a run config: the config's
  user-set fields checked first (`validate_config`, before anything is
  written, compiled or restored), then logging, TensorFlow kept off the
  GPUs, multi-process start and the XLA cache.

  needs: the parts of the config the command reads, some of "train",
  "eval", "model" (fcos_jax.run.validate)."""
  validate_config(config, needs=needs)
  configure_logging()
  from fcos_jax.data import tf_setup  # noqa: F401  (TF hidden from GPUs)
  from fcos_jax import runtime
  runtime.initialize_distributed(config.get("distributed"))
  runtime.enable_compilation_cache(config.compilation_cache_dir)


def validate_config(config, needs) -> None:
  """The config's user-set fields checked (fcos_jax.run.validate); a
  ConfigError names the field, the value and a valid example. `setup`
  calls it: a command does not call it itself."""
  from fcos_jax.run.validate import validate  # pylint: disable=import-outside-toplevel
  validate(config, needs=needs)


def _without_closed_loop_noise(hook):
  """After a failed asynchronous checkpoint write, orbax's event loop is
  closed while tensorstore still completes the other writes; each of their
  callbacks reports "RuntimeError: Event loop is closed" (hundreds of
  tracebacks) as an unraisable exception. Those say nothing the loop's one
  error line does not; every other unraisable exception still prints."""

  def quiet(unraisable):
    exc = unraisable.exc_value
    if isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed":
      return
    hook(unraisable)

  return quiet


def define_trained_run_flags(workdir_help: str) -> None:
  """--config (default: the run's recorded config), --workdir and
  --checkpoint: the flags of the commands that read a trained run (listed
  by --helpshort as the calling script's own)."""
  from ml_collections import config_flags
  flags.disclaim_key_flags()
  config_flags.DEFINE_config_file(
      "config", None, "Path to an ml-collections config file; default: the "
      "run's recorded config.", lock_config=True)
  flags.DEFINE_string("workdir", None, workdir_help)
  flags.DEFINE_string(
      "checkpoint", None,
      "A step number or a checkpoint directory; default: latest.")


def recorded_config(workdir: str):
  """The run's recorded config (latest config*.json in the workdir)."""
  from fcos_jax.run import Run
  return Run(workdir).recorded_config()


def packaged_configs_dir() -> str:
  """fcos_jax/configs of the installed package (found by path: the cli
  and the configs are independent layers)."""
  import fcos_jax  # pylint: disable=import-outside-toplevel
  return os.path.join(os.path.dirname(os.path.abspath(fcos_jax.__file__)),
                      "configs")


def packaged_config_names() -> list[str]:
  """The names --config accepts without a path (zoo:MODEL for zoo.py)."""
  root = packaged_configs_dir()
  return sorted(f[:-3] for f in os.listdir(root)
                if f.endswith(".py") and not f.startswith("_"))


def resolve_config(value: str) -> str:
  """--config's value as ml-collections takes it (`path[:arg]`): an
  existing file stays as it is; otherwise NAME, NAME.py or NAME:ARG (e.g.
  zoo:MODEL) names fcos_jax/configs/NAME.py. Anything else raises
  flags.Error naming the packaged configs."""
  name, sep, arg = value.partition(":")
  if os.path.isfile(value) or os.path.isfile(name):
    path = value if os.path.isfile(value) else name
    if not path.endswith(".py"):  # It would be run as Python.
      raise flags.Error(
          f"--config {value}: {path} is no Python config file (.py with a "
          "get_config()); e.g. --config configs/synthetic_cpu.py.")
    return value
  base = name[:-3] if name.endswith(".py") else name
  if base and not os.path.isabs(base):
    path = os.path.join(packaged_configs_dir(), base + ".py")
    if os.path.isfile(path):
      return path + sep + arg
  raise flags.Error(
      f"--config {value}: no such file, and no packaged config of that name; "
      f"packaged: {', '.join(packaged_config_names())} (zoo:MODEL names a "
      "model of zoo.py).")


def _with_resolved_config(argv):
  """argv with the value of --config (either form) resolved."""
  out, i = list(argv[:1]), 1
  while i < len(argv):
    a = argv[i]
    if a == "--":
      out += argv[i:]
      break
    if a.startswith("--config="):
      a = "--config=" + resolve_config(a[len("--config="):])
    elif a == "--config" and i + 1 < len(argv):
      out += [a, resolve_config(argv[i + 1])]
      i += 2
      continue
    out.append(a)
    i += 1
  return _with_recorded_config(out)


# Set by `run` for the commands that read a run (evaluate, predict,
# analyze, export): there --config.FIELD without --config changes the run's
# recorded config. train.py and fcos-convert write --workdir instead.
_OVERRIDES_CHANGE_RECORDED = False


def _with_recorded_config(argv):
  """--config.FIELD overrides without --config change the recorded config
  of --workdir (configs/recorded.py), placed first as ml-collections needs
  --config before its overrides."""
  args = argv[1:argv.index("--")] if "--" in argv else argv[1:]
  if (not _OVERRIDES_CHANGE_RECORDED or
      not any(a.startswith("--config.") for a in args) or
      any(a == "--config" or a.startswith("--config=") for a in args)):
    return argv
  workdir = [a.split("=", 1)[1] for a in args if a.startswith("--workdir=")]
  workdir += [args[i + 1] for i, a in enumerate(args[:-1]) if a == "--workdir"]
  if not workdir:
    first = next(a for a in args if a.startswith("--config."))
    _flag_error(f"{first.split('=')[0]}: an override needs a config: give "
                "--config CONFIG, or --workdir of a run to change the config "
                "it recorded.")
  recorded = os.path.join(packaged_configs_dir(), "recorded.py")
  return argv[:1] + [f"--config={recorded}:{workdir[-1]}"] + argv[1:]


def _flag_error(text: str):
  print(f"error: {text}\nPass --helpshort or --helpfull to see help on "
        "flags.", file=sys.stderr)
  sys.exit(2)


def _parse_flags(argv):
  """absl's flag parsing, with --config by name and a bad flag or
  --config.FIELD as one line (exit 2): ml-collections raises plain
  AttributeError/KeyError for unknown fields."""
  from fcos_jax.errors import UserError  # pylint: disable=import-outside-toplevel
  try:
    return flags.FLAGS(_with_resolved_config(argv))
  except OSError as e:
    # ml-collections keeps a config file's failure to load (e.g. the
    # recorded config of a --workdir without config.json) for its first use.
    if not isinstance(e.__cause__, UserError):
      raise
    _flag_error(f"--config: {e.__cause__}")
  except flags.Error as e:
    # A config file's get_config refusing with a UserError: its one line,
    # not the traceback ml-collections puts into the flag's message.
    refused = re.findall(r"^fcos_jax\.errors\.\w+: (.*)$", str(e), re.M)
    _flag_error(f"--config: {refused[-1]}" if refused else str(e))
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    text = str(e.args[0] if e.args else e)
    hint = re.search(r'Did you mean "(\w+)" instead of "(\w+)"', text)
    key = hint.group(2) if hint else re.sub(r"\W", "", text.split("\\n")[0])
    where = [a.split("=")[0] for a in argv[1:] if a.startswith("--config.")
             and key in a.split("=")[0].split(".")]
    missing = re.search(r"module '([^']*)' has no attribute 'get_config'",
                        text)
    if missing:
      given = [a.split("=", 1)[1] for a in argv[1:]
               if a.startswith("--config=")] + [
                   argv[i + 1] for i, a in enumerate(argv[:-1])
                   if a == "--config"]
      _flag_error(f"--config {given[0] if given else ''}: the file defines "
                  "no get_config(); a config file returns its ConfigDict "
                  "from get_config() (see configs/synthetic_cpu.py).")
    if "object has no attribute" in text:
      raise  # Python's own: a programming error (e.g. in a config file's
      # get_config), shown with its traceback.
    name = where[0] if where else "a --config override"
    fix = f'; did you mean "{hint.group(1)}"?' if hint else "."
    print(f"error: {name}: the config has no field {key!r}{fix}",
          file=sys.stderr)
    sys.exit(2)


def _exit_without_waiting(code: int) -> None:
  """Ends a failed command. Python's own exit joins every library thread
  still running, and after a storage fault orbax's commit threads may
  retry for minutes: the error is reported, so the process ends now
  (logs and output flushed; our own clean-up already ran in `finally`s)."""
  if not any(t.is_alive() and not t.daemon and t is not threading.main_thread()
             for t in threading.enumerate()):
    sys.exit(code)
  py_logging.shutdown()
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(code)  # pylint: disable=protected-access


def run(main, argv=None, overrides_change_recorded: bool = False) -> None:
  """absl's app.run of `main` under the one error policy of the commands:

  - `fcos_jax.errors.UserError` and absl's UsageError: one line
    `error: ...` on stderr, exit 1;
  - a bad flag, --config name or --config.FIELD: one line, exit 2;
  - anything else is a programming error and keeps its traceback;
  - SIGTERM/SIGINT before train.py's first step: one line, exit 128 +
    signal (the start-up unwound, its lock released); Ctrl-C in the other
    commands: one line, exit 130;
  - --version prints the package's version and exits 0.

  overrides_change_recorded: the command reads a run (--workdir), so
  --config.FIELD without --config changes the run's recorded config.
  """
  from fcos_jax import __version__  # pylint: disable=import-outside-toplevel
  from fcos_jax.errors import StoppedBeforeTraining, UserError  # pylint: disable=import-outside-toplevel
  global _OVERRIDES_CHANGE_RECORDED
  _OVERRIDES_CHANGE_RECORDED = overrides_change_recorded
  argv = list(sys.argv if argv is None else argv)
  before_dashes = argv[1:argv.index("--")] if "--" in argv else argv[1:]
  if "--version" in before_dashes:
    print(f"{os.path.basename(argv[0])} {__version__}")
    sys.exit(0)

  def wrapped(args):
    try:
      return main(args)
    except (UserError, app.UsageError) as e:
      py_logging.getLogger("fcos_jax").debug("Traceback:", exc_info=True)
      print(f"error: {e}", file=sys.stderr, flush=True)
      _exit_without_waiting(1)
    except StoppedBeforeTraining as e:
      print(f"error: stopped by {e.signal_name} before the first training "
            "step; nothing was recorded. Run the same command to start.",
            file=sys.stderr, flush=True)
      _exit_without_waiting(e.exit_code)
    except KeyboardInterrupt:  # Ctrl-C in a command without a training loop.
      print("error: interrupted (SIGINT). Run the same command again.",
            file=sys.stderr, flush=True)
      _exit_without_waiting(130)

  app.run(wrapped, argv=argv, flags_parser=_parse_flags)
