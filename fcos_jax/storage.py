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
"""

from __future__ import annotations

import json
import os
import uuid

from etils import epath


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
  return path(p).exists()


def makedirs(p) -> None:
  path(p).mkdir(parents=True, exist_ok=True)


def read_bytes(p) -> bytes:
  return path(p).read_bytes()


def read_text(p) -> str:
  return path(p).read_text()


def read_json(p):
  return json.loads(read_text(p))


def write_bytes_atomic(p, data: bytes) -> None:
  """Writes `p` so that a reader sees the old file or the whole new one.

  Local: a temporary sibling renamed over `p`. URLs: one object upload,
  which object stores make visible only once complete.
  """
  target = path(p)
  if is_url(p):
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
