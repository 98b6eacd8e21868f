"""One path layer for every file the project reads or writes.

Paths stay plain strings in configs and code; this module turns them into
`etils.epath` paths, the layer orbax uses too, so a `gs://bucket/...` URL
works wherever a local path does. Local paths get `~` expanded and are never
made absolute behind the user's back; URLs are never touched by `os.path`.

Which client serves a `gs://` path (see README, "Where gs:// files go"):
epath uses TensorFlow's GCS filesystem when TensorFlow is installed, or
gcsfs (fsspec) with `EPATH_USE_TF=false`. Array data in checkpoints goes
through tensorstore (orbax). TensorFlow's own readers (tf.data file reads,
tf.summary) use TensorFlow's client directly, so `tf_reaches` says whether
they can open a path, and the callers route the others through here.

Faults: every URL operation here is retried by its client (gcsfs: 6 tries,
1 + 2 + 4 + 8 + 16 s of back-off, so about 35 s when the service does not
answer; TensorFlow's GCS client: 10 tries), then raises
`fcos_jax.errors.StorageError` naming the path and the cause; a missing
bucket is named as such, at once (no retries: a 404 is final).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
import uuid

from etils import epath

from fcos_jax.errors import DataError, StorageError



class _RetriesSpent(logging.Filter):
  """gcsfs logs each request that ran out of retries with its traceback
  (logger.exception), then raises; `guard` turns that error into one line
  naming the path, so the log record would only repeat it, 40 lines long."""

  def filter(self, record):
    return not (record.levelno >= logging.ERROR and record.exc_info and
                "retries" in str(record.msg) or
                "non-retriable exception" in str(record.msg))


if not any(isinstance(f, _RetriesSpent)
           for f in logging.getLogger("gcsfs").filters):
  logging.getLogger("gcsfs").addFilter(_RetriesSpent())

# Errors that are an answer about the path, not a failure to reach the
# store: they pass through unchanged.
_ANSWERS = (FileNotFoundError, FileExistsError, IsADirectoryError,
            NotADirectoryError, PermissionError)


def bucket_of(p) -> str | None:
  """The bucket of a `scheme://bucket/...` URL (None for local paths)."""
  p = str(p)
  if not is_url(p):
    return None
  return p.split("://", 1)[1].split("/", 1)[0] or None


def _is_network_fault(e: BaseException) -> bool:
  """A failure to talk to the store (connection refused or reset, time-out,
  a 5xx after the client's retries), as opposed to an answer (not found)."""
  if isinstance(e, _ANSWERS):
    return False
  if isinstance(e, (OSError, TimeoutError)):
    return True
  kind = type(e)
  return any(c.__name__ in ("HttpError", "ClientError", "ServerError",
                            "TransportError", "RequestException",
                            "UnavailableError", "DeadlineExceededError",
                            "AbortedError")
             for c in kind.__mro__)


def _missing_bucket(p) -> str | None:
  """The bucket of URL `p` when it does not exist (checked after a
  not-found answer, so a typo in the bucket is named as such)."""
  bucket = bucket_of(p)
  if bucket is None or str(p).startswith("ram://"):
    return None
  scheme = str(p).split("://", 1)[0]
  try:
    return None if epath.Path(f"{scheme}://{bucket}").exists() else bucket
  except Exception:  # pylint: disable=broad-except  (the first error counts)
    return None


def check_bucket(p) -> None:
  """StorageError naming the bucket when URL `p`'s bucket does not exist
  (for a path found missing; nothing for local paths)."""
  with guard(p, "check"):
    bucket = _missing_bucket(p)
  if bucket:
    raise StorageError(
        f"{p}: the bucket {bucket!r} does not exist (or these credentials "
        "cannot see it). Check the bucket name in the path.")


@contextlib.contextmanager
def guard(p, what: str = "access"):
  """Turns a URL operation's network fault into one StorageError naming the
  path, the operation, the cause and the time spent (the client's bounded
  retries included), and a not-found answer from a bucket that does not
  exist into one naming the bucket. Local paths pass through unchanged."""
  if not is_url(p):
    yield
    return
  start = time.monotonic()
  try:
    yield
  except StorageError:
    raise
  except FileNotFoundError as e:
    bucket = _missing_bucket(p)
    if bucket:
      raise StorageError(
          f"{p}: the bucket {bucket!r} does not exist (or these credentials "
          "cannot see it). Check the bucket name in the path.") from e
    raise
  except Exception as e:  # pylint: disable=broad-except
    if not _is_network_fault(e):
      raise
    cause = str(e).strip().splitlines()[0] if str(e).strip() else ""
    raise StorageError(
        f"{p}: could not {what} it: the storage did not answer after "
        f"{time.monotonic() - start:.0f} s of retries ({type(e).__name__}"
        f"{': ' + cause[:200] if cause else ''}). Check the network and the "
        "service, then run the command again.") from e


# tensorstore (orbax's array data) retries each GCS request up to 32 times
# with back-off up to 32 s by default, so a checkpoint write or restore to
# storage that went down waits about a quarter of an hour per request, in
# orbax's background thread (more than 100 s measured before it was
# killed). Bounded here like gcsfs's: 6 tries, under a minute (49 s
# measured on a closed port). `tensorstore_context(spec)` adds it to a
# tensorstore context spec; fcos_jax.run.checkpoint gives it to orbax.
TENSORSTORE_GCS_RETRIES = {"max_retries": 6, "initial_delay": "1s",
                           "max_delay": "16s"}


def tensorstore_context(spec: dict | None = None) -> dict:
  """A tensorstore context spec with bounded GCS retries (see above)."""
  return dict(spec or {}, gcs_request_retries=dict(TENSORSTORE_GCS_RETRIES))


def is_url(path) -> bool:
  """True for `scheme://...` paths (gs://, s3://, ram://, ...)."""
  return "://" in str(path)


def path(p) -> epath.Path:
  """`p` as an epath.Path (local paths: `~` expanded)."""
  p = str(p)
  return epath.Path(p if is_url(p) else os.path.expanduser(p))


def join(base, *parts) -> str:
  """`base/parts...` as a string, keeping URLs intact."""
  return os.fspath(path(base).joinpath(*parts))


def exists(p) -> bool:
  with guard(p, "check"):
    return path(p).exists()


def makedirs(p) -> None:
  with guard(p, "make"):
    path(p).mkdir(parents=True, exist_ok=True)


def read_bytes(p) -> bytes:
  with guard(p, "read"):
    return path(p).read_bytes()


def read_text(p) -> str:
  with guard(p, "read"):
    return path(p).read_text()


def read_json(p):
  """The JSON in file `p`; a damaged one (truncated, not JSON) is a
  DataError naming the file (a ValueError, as json's own error is)."""
  data = read_bytes(p)
  try:
    return json.loads(data)
  except ValueError as e:  # JSONDecodeError, or bad UTF-8 (a binary file).
    raise DataError(
        f"{p}: not valid JSON ({str(e)[:120]}; {len(data)} bytes): the file is "
        "truncated or damaged. Restore it from a copy, or remove it if "
        "the command can remake it.") from None


def write_bytes_atomic(p, data: bytes) -> None:
  """Writes `p` so that a reader sees the old file or the whole new one.

  Local: a temporary sibling renamed over `p`. URLs: one object upload,
  which object stores make visible only once complete.
  """
  target = path(p)
  if is_url(p):
    with guard(p, "write"):
      target.write_bytes(data)
    return
  target.parent.mkdir(parents=True, exist_ok=True)
  tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
  try:
    tmp.write_bytes(data)
    os.replace(tmp, target)
  finally:
    if tmp.exists():
      tmp.unlink()


def write_text_atomic(p, text: str) -> None:
  write_bytes_atomic(p, text.encode())


def write_json_atomic(p, obj, indent: int | None = None) -> None:
  write_text_atomic(p, json.dumps(obj, indent=indent))


def epath_uses_tf() -> bool:
  """Whether epath serves URLs through TensorFlow's filesystems."""
  return os.environ.get("EPATH_USE_TF", "").lower() not in ("false", "0")


def tf_reaches(p) -> bool:
  """Whether TensorFlow's own file ops (tf.io.read_file, tf.summary) open
  `p` with the client epath uses for it: local paths and TF's ram:// always;
  other URLs only when epath goes through TF too (otherwise, e.g. gs:// on
  the GCS emulator with EPATH_USE_TF=false, TF's client would go elsewhere).
  """
  p = str(p)
  return not is_url(p) or p.startswith("ram://") or epath_uses_tf()
