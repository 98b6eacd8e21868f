"""The workdir lock under a race on gs:// (the storage emulator): writers
that try to take the lock of one workdir at the same moment, as threads
and as separate processes; exactly one wins, every other gets the one-line
WorkdirLockedError naming the holder.

The lock's create step is a create-only upload (ifGenerationMatch=0, gcsfs
mode="create"); tests/gcs_emulator_server.py makes the emulator refuse it
as real Cloud Storage does (the emulator alone ignores it), which the first
test checks. Without gcsfs the lock falls back to writing and reading its
token back after a pause; that path is raced too.
"""

import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from cli_runs import ROOT
from gcs_emulator import BUCKET, gcs  # noqa: F401  (the fixture)

from fcos_jax import errors, storage
from fcos_jax.run import Run
from fcos_jax.run import lock as lock_lib

TIMEOUT_S = 120


def test_emulator_refuses_a_second_create_only_upload(gcs):  # noqa: F811
  path = f"gs://{BUCKET}/precondition/x.json"
  fs = lock_lib._fsspec(path)
  assert fs is not None  # gcsfs: the create-only upload is what is tested.
  fs.pipe_file(path, b"first", mode="create")
  with pytest.raises(FileExistsError):
    fs.pipe_file(path, b"second", mode="create")
  assert fs.cat_file(path) == b"first"
  fs.pipe_file(path, b"third")  # A plain upload still overwrites.
  assert fs.cat_file(path) == b"third"


def _race(workdir, n):
  """n threads released together, each taking the lock of `workdir`; the
  held locks and the errors (strings), bounded in time."""
  barrier = threading.Barrier(n, timeout=TIMEOUT_S)
  held, failed, unexpected = [], [], []

  def take():
    lock = Run(workdir).lock("train.py")
    barrier.wait()
    try:
      held.append(lock.acquire())
    except errors.WorkdirLockedError as e:
      failed.append(str(e))
    except BaseException as e:  # pylint: disable=broad-except
      unexpected.append(repr(e))

  threads = [threading.Thread(target=take, daemon=True) for _ in range(n)]
  for t in threads:
    t.start()
  for t in threads:
    t.join(timeout=TIMEOUT_S)
  assert not any(t.is_alive() for t in threads), "a lock attempt hung"
  assert not unexpected, unexpected
  return held, failed


def _check_one_winner(workdir, held, failed, n):
  assert len(held) == 1 and len(failed) == n - 1, (held, failed)
  [winner] = held
  try:
    on_disk = json.loads(storage.read_text(Run(workdir).lock_file))
    assert on_disk["token"] == winner.token
    for text in failed:
      assert f"{workdir} is in use by train.py (pid {os.getpid()} on " \
          f"{socket.gethostname()}" in text, text
      assert "\n" not in text
  finally:
    winner.release()
  assert not storage.exists(Run(workdir).lock_file)


class _NeverExists:
  """fcos_jax.storage as the lock sees it, with `exists` always False: every
  racer goes on to the create step."""

  def __getattr__(self, name):
    return getattr(storage, name)

  @staticmethod
  def exists(path):
    del path
    return False


@pytest.mark.parametrize("how", ["create_only_upload", "read_back"])
def test_threads_racing_for_a_gcs_lock_one_wins(gcs, monkeypatch,  # noqa: F811
                                                how):
  if how == "read_back":  # The fallback without gcsfs: write, pause, read.
    monkeypatch.setattr(lock_lib, "_fsspec", lambda path: None)
  for round_ in range(3):
    workdir = f"gs://{BUCKET}/race_{how}_{round_}"
    held, failed = _race(workdir, 4)
    _check_one_winner(workdir, held, failed, 4)


def test_create_only_upload_refuses_a_writer_with_a_stale_view(
    gcs, monkeypatch):  # noqa: F811
  """The create step itself is atomic: a writer whose existence check said
  "no lock" (gcsfs's listing cache, another process's upload in flight)
  and who reads back at once is still refused. Without the precondition
  its upload would replace the holder's lock and read back its own token."""
  workdir = f"gs://{BUCKET}/stale_view"
  monkeypatch.setattr(lock_lib, "READ_BACK_PAUSE_S", 0.0)
  first = Run(workdir).lock("train.py").acquire()
  monkeypatch.setattr(lock_lib, "storage", _NeverExists())
  with pytest.raises(errors.WorkdirLockedError,
                     match=rf"pid {os.getpid()} on "):
    Run(workdir).lock("fcos-convert").acquire()
  monkeypatch.undo()
  _check_one_winner(workdir, [first], [], 1)


def test_threads_racing_to_take_over_a_stale_gcs_lock(gcs, caplog):  # noqa: F811
  """A dead holder's lock (old heartbeat, another host): the racers all
  see it stale; one takes it over, the others are refused naming it."""
  workdir = f"gs://{BUCKET}/race_stale"
  stale = {"host": "a-lost-machine", "pid": 1, "command": "train.py",
           "started": "2026-01-01T00:00:00+00:00",
           "heartbeat": time.time() - 10 * lock_lib.STALE_AFTER_S,
           "token": "dead"}
  storage.write_text_atomic(Run(workdir).lock_file, json.dumps(stale))
  held, failed = _race(workdir, 3)
  _check_one_winner(workdir, held, failed, 3)
  assert any("Taking over the lock" in r.getMessage() for r in caplog.records)


# One process's attempt: waits for the agreed start time, takes the lock,
# holds it a while (so the other sees a live holder), then releases it.
_ATTEMPT = textwrap.dedent("""
    import sys, time
    from fcos_jax import errors
    from fcos_jax.run import Run
    workdir, start_at = sys.argv[1], float(sys.argv[2])
    lock = Run(workdir).lock("train.py")
    storage_ready = lock.read()  # The client is up before the start.
    time.sleep(max(0.0, start_at - time.time()))
    try:
      lock.acquire()
    except errors.WorkdirLockedError as e:
      print("refused:", e, flush=True)
      sys.exit(3)
    print("won", flush=True)
    time.sleep(4)
    lock.release()
""")


def test_two_processes_racing_for_a_gcs_lock_one_wins(gcs, tmp_path):  # noqa: F811
  workdir = f"gs://{BUCKET}/race_processes"
  env = dict(os.environ, PYTHONPATH=str(ROOT), **gcs)
  start_at = time.time() + 8  # Both are importing by then.
  procs = [subprocess.Popen(
      [sys.executable, "-c", _ATTEMPT, workdir, str(start_at)], cwd=ROOT,
      env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for _ in range(2)]
  try:
    outs = [p.communicate(timeout=TIMEOUT_S) for p in procs]
  finally:
    for p in procs:  # Only ours, by pid.
      if p.poll() is None:
        p.kill()
        p.wait()
  codes = sorted(p.returncode for p in procs)
  assert codes == [0, 3], [(p.returncode, o[1][-2000:]) for p, o in
                           zip(procs, outs)]
  winner = next(p for p in procs if p.returncode == 0)
  [refused] = [o[0] for p, o in zip(procs, outs) if p.returncode == 3]
  assert refused.startswith(f"refused: {workdir} is in use by train.py "
                            f"(pid {winner.pid} on "), refused
  assert len(refused.strip().splitlines()) == 1
  assert not storage.exists(Run(workdir).lock_file)


def _stale_local_lock(workdir):
  stale = {"host": "a-lost-machine", "pid": 1, "command": "train.py",
           "started": "2026-01-01T00:00:00+00:00",
           "heartbeat": time.time() - 10 * lock_lib.STALE_AFTER_S,
           "token": "dead"}
  os.makedirs(workdir, exist_ok=True)
  storage.write_text_atomic(Run(workdir).lock_file, json.dumps(stale))


def test_threads_racing_to_take_over_a_stale_local_lock(tmp_path):
  workdir = str(tmp_path / "race_stale_local")
  for _ in range(10):  # Rounds: the interleavings differ.
    _stale_local_lock(workdir)
    held, failed = _race(workdir, 4)
    _check_one_winner(workdir, held, failed, 4)
    assert os.listdir(workdir) == []  # Nothing set aside is left.


def test_a_late_take_over_never_removes_the_fresh_lock(tmp_path):
  """B saw the stale lock, A took it over first: B's removal of "the stale
  lock" must leave A's."""
  workdir = str(tmp_path / "late")
  _stale_local_lock(workdir)
  a = Run(workdir).lock("train.py").acquire()
  b = Run(workdir).lock("train.py")
  try:
    b._remove_stale("dead")  # pylint: disable=protected-access
    on_disk = json.loads(storage.read_text(Run(workdir).lock_file))
    assert on_disk["token"] == a.token
    assert os.listdir(workdir) == [lock_lib.FILE]
  finally:
    a.release()
