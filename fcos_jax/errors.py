"""The project's error types, in one place.

Every `UserError` says what is wrong, where (file, field or path) and the
fix in its message: the command-line tools print it as one line and exit
1. Any other exception is a programming error and keeps its traceback.
The subclasses also derive from the built-in type they refine (ValueError,
OSError, ...), so callers that catch those keep working.
"""

from __future__ import annotations


class UserError(Exception):
  """An error whose message names the problem and the fix (one line)."""


class ConfigError(UserError, ValueError):
  """A config value that cannot work (field, value and a valid example)."""


class ConfigChangeError(ConfigError):
  """A resumed run's config differs from the checkpoints' in a field that
  must not change (or may only with allow_config_change)."""


class DataError(UserError, ValueError):
  """Bad input data: the message names the file or annotation and the fix."""


class UnreadableImage(UserError):
  """A file that is no image TF can decode (named in the message)."""


class MissingFileError(UserError, FileNotFoundError):
  """A file or folder the command needs is not there (named, with the fix)."""


class WorkdirError(UserError, OSError):
  """The workdir cannot be made or written."""


class CheckpointWriteError(UserError, OSError):
  """A checkpoint could not be written (full disk, no permission, ...)."""


class NonFiniteLossError(UserError, RuntimeError):
  """The loss or gradient became NaN/inf; the last good checkpoint is kept."""


class StorageError(UserError, OSError):
  """A storage URL (gs://...) that cannot be reached after the client's
  bounded retries, or a bucket that does not exist (path and cause named)."""


class CheckpointReadError(UserError, OSError):
  """No checkpoint of a run can be restored (each one named, with the fix)."""


class WorkdirLockedError(WorkdirError):
  """Another live process writes this workdir (the holder is named)."""


class MissingExtraError(UserError, ImportError):
  """A command needs an optional package that is not installed: the message
  names what needs it and the pip extra that installs it (pyproject.toml)."""


def require_extra(extra: str, what: str, *modules: str) -> None:
  """Imports `modules`; if one is missing, a MissingExtraError naming `what`
  needs it and the install line of `extra`. Call it before anything is
  written, so a missing package never leaves half an output behind."""
  import importlib  # pylint: disable=import-outside-toplevel
  missing = []
  for name in modules:
    try:
      importlib.import_module(name)
    except ImportError:
      missing.append(name)
  if missing:
    raise MissingExtraError(
        f"{what} needs {', '.join(missing)}, not installed: "
        f'pip install "fcos-jax[{extra}]" (in a clone: pip install '
        f'".[{extra}]").')


class StoppedBeforeTraining(BaseException):
  """SIGTERM/SIGINT before the first training step: the start-up unwinds
  through its `finally`s (the workdir's lock released, nothing recorded) and
  the command exits 128 + signal with one line. A BaseException, so no
  `except Exception` on the way swallows it."""

  def __init__(self, signal_name: str, exit_code: int):
    super().__init__(signal_name)
    self.signal_name = signal_name
    self.exit_code = exit_code


def root_cause(error: BaseException, limit: int = 160) -> str:
  """'Type: first line' of the innermost cause of a chained exception (for
  one-line messages about errors that libraries wrap in several layers)."""
  seen = error
  while seen.__cause__ is not None or seen.__context__ is not None:
    seen = seen.__cause__ or seen.__context__
  text = str(seen).strip().splitlines()
  return f"{type(seen).__name__}: {(text[0] if text else '')[:limit]}"
