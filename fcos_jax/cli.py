"""Process set-up and error reporting shared by the command-line entry points."""

from __future__ import annotations

import logging as py_logging
import os
import re
import sys

from absl import app, flags, logging

# Libraries whose INFO chatter is not the user's business (warnings show),
# by the name of their Python logger.
_QUIET_LOGGERS = ("jax", "orbax", "etils", "gcsfs", "fsspec", "google",
                  "urllib3")


class _QuietPackages(py_logging.Filter):
  """For records of the "absl" logger that come from the packages of
  `modules`: drops INFO, and keeps errors to their one-line message (the
  loop re-raises the cause as one clear error, and a background thread's
  traceback would bury it).

  Needed for orbax, which logs through absl's logger, as clu's metric
  writer and our own lines do: the logger name cannot tell them apart, the
  source file can (the installed package's folder, not a path pattern, so
  a checkout under any folder name keeps its INFO lines).
  """

  def __init__(self, modules):
    super().__init__()
    self._dirs = tuple(os.path.dirname(m.__file__) + os.sep for m in modules)

  def filter(self, record):
    if not record.pathname.startswith(self._dirs):
      return True
    if record.levelno < py_logging.WARNING:
      return False
    record.exc_info, record.exc_text, record.stack_info = None, None, None
    return True


def configure_logging() -> None:
  """INFO for the run's own lines, WARNING and up for the libraries'."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  logging.set_verbosity(logging.INFO)
  for name in _QUIET_LOGGERS:
    py_logging.getLogger(name).setLevel(py_logging.WARNING)
  import orbax.checkpoint
  absl_logger = py_logging.getLogger("absl")
  if not any(isinstance(f, _QuietPackages) for f in absl_logger.filters):
    absl_logger.addFilter(_QuietPackages([orbax.checkpoint]))
  # Only orbax's background tasks run on asyncio here; a failed one is
  # re-raised by the loop as one error, not as "Task exception was never
  # retrieved" and its traceback.
  py_logging.getLogger("asyncio").setLevel(py_logging.CRITICAL)
  sys.unraisablehook = _without_closed_loop_noise(sys.unraisablehook)


def setup(config) -> None:
  """Logging, TensorFlow kept off the GPUs, multi-process start, XLA cache."""
  configure_logging()
  from fcos_jax.data import tf_setup  # noqa: F401  (TF hidden from GPUs)
  from fcos_jax import runtime
  runtime.initialize_distributed(config.get("distributed"))
  runtime.enable_compilation_cache(config.compilation_cache_dir)


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


def user_errors() -> tuple[type[BaseException], ...]:
  """Errors whose message says what is wrong and how to fix it: printed as
  one line, without a traceback."""
  from fcos_jax.errors import UserError
  return (UserError, FileNotFoundError, ValueError)


def _parse_flags(argv):
  """absl's flag parsing, with a bad --config.FIELD as one line (exit 2):
  ml-collections raises plain AttributeError/KeyError for unknown fields."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    # A config file's get_config refusing with a UserError: its one line,
    # not the traceback ml-collections puts into the flag's message.
    refused = re.findall(r"^fcos_jax\.errors\.\w+: (.*)$", str(e), re.M)
    text = f"--config: {refused[-1]}" if refused else str(e)
    print(f"error: {text}\nPass --helpshort or --helpfull to see help on "
          "flags.", file=sys.stderr)
    sys.exit(2)
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    text = str(e.args[0] if e.args else e)
    hint = re.search(r'Did you mean "(\w+)" instead of "(\w+)"', text)
    key = hint.group(2) if hint else re.sub(r"\W", "", text.split("\\n")[0])
    where = [a.split("=")[0] for a in argv[1:] if a.startswith("--config.")
             and key in a.split("=")[0].split(".")]
    name = where[0] if where else "a --config override"
    fix = f'; did you mean "{hint.group(1)}"?' if hint else "."
    print(f"error: {name}: the config has no field {key!r}{fix}",
          file=sys.stderr)
    sys.exit(2)


def run(main) -> None:
  """absl's app.run, with the user errors above as one clear line (exit 1)."""

  def wrapped(argv):
    try:
      return main(argv)
    except app.UsageError:
      raise
    except user_errors() as e:
      py_logging.getLogger("fcos_jax").debug("Traceback:", exc_info=True)
      print(f"error: {e}", file=sys.stderr, flush=True)
      sys.exit(1)

  app.run(wrapped, flags_parser=_parse_flags)
