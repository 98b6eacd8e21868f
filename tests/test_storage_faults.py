"""fcos_jax.storage against faults: a bucket that does not exist, storage
that stops answering (bounded retries, then one line naming the path and
the cause; SIGTERM still ends the command), `**` patterns on gs://, a
truncated JSON."""

import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from cli_runs import ROOT, cli_env
from fcos_jax import errors, storage
from fcos_jax.inference import images
from gcs_emulator import BUCKET, gcs, emulator_env, _free_port  # noqa: F401

# gcsfs gives up after 6 tries with 1 + 2 + 4 + 8 + 16 s (+ up to 1 s
# each) of back-off: about 35 s per operation when nothing answers.
BOUND_S = 90


def _png_bytes(h=20, w=30):
  import io
  buf = io.BytesIO()
  Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(buf, "PNG")
  return buf.getvalue()


def test_missing_bucket_is_one_line_naming_it(gcs):  # noqa: F811
  for spec in ("gs://no-such-bucket-fcos/a.jpg", "gs://no-such-bucket-fcos/*.jpg",
               "gs://no-such-bucket-fcos/**/*.jpg"):
    t0 = time.monotonic()
    with pytest.raises(errors.StorageError) as e:
      images.list_images(spec)
    assert "'no-such-bucket-fcos' does not exist" in str(e.value)
    assert time.monotonic() - t0 < 10  # A 404 is final: no retries.
  with pytest.raises(errors.StorageError, match="no-such-bucket-fcos"):
    storage.read_bytes("gs://no-such-bucket-fcos/x.json")
  # A missing file in a bucket that exists stays a plain not-found.
  with pytest.raises(FileNotFoundError) as e:
    storage.read_bytes(f"gs://{BUCKET}/nothing.json")
  assert not isinstance(e.value, errors.StorageError)


def test_double_star_patterns_on_gs(gcs):  # noqa: F811
  b = f"gs://{BUCKET}/globs"
  for p in ("x/a/1.jpg", "x/b/c/2.jpg", "x/3.jpg", "x/4.png", "y/5.jpg"):
    storage.write_bytes_atomic(f"{b}/{p}", b"x")
  assert images.list_images(f"{b}/x/**/*.jpg") == [
      f"{b}/x/3.jpg", f"{b}/x/a/1.jpg", f"{b}/x/b/c/2.jpg"]
  assert images.list_images(f"{b}/**/?.png") == [f"{b}/x/4.png"]
  assert images.list_images(f"{b}/x/*/[bc]/*.jpg") == [f"{b}/x/b/c/2.jpg"]
  assert images.list_images(f"{b}/x/*.jpg") == [f"{b}/x/3.jpg"]
  with pytest.raises(errors.MissingFileError, match="matches no file"):
    images.list_images(f"{b}/x/**/*.gif")


def test_truncated_json_names_the_file(tmp_path):
  p = tmp_path / "config.json"
  p.write_text('{"model": {"num_classes": 8')
  with pytest.raises(errors.DataError) as e:
    storage.read_json(str(p))
  assert str(p) in str(e.value) and "truncated" in str(e.value)
  assert isinstance(e.value, ValueError)


def _one_line(proc, *needles):
  assert proc.returncode == 1, (proc.returncode, proc.stderr[-3000:])
  assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
  lines = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
  assert len(lines) == 1, proc.stderr[-3000:]
  for n in needles:
    assert n in lines[0], lines[0]


def test_binary_file_as_json_names_the_file(tmp_path):
  p = tmp_path / "detections.json"
  p.write_bytes(bytes(range(256)))
  with pytest.raises(errors.DataError) as e:
    storage.read_json(str(p))
  assert str(p) in str(e.value) and "not valid JSON" in str(e.value)


def test_truncated_config_json_is_one_line_in_evaluate_and_predict(tmp_path):
  run = tmp_path / "run"
  run.mkdir()
  (run / "config.json").write_text('{"model": {"num_classes": 8, "back')
  im = tmp_path / "x.png"
  im.write_bytes(_png_bytes())
  for cmd in (["evaluate"], ["predict", f"--images={im}",
                             f"--out={tmp_path / 'out'}"]):
    proc = subprocess.run(
        [sys.executable, "-m", f"fcos_jax.cli.{cmd[0]}", f"--workdir={run}"] +
        cmd[1:], cwd=ROOT, env=cli_env(), capture_output=True, text=True,
        timeout=300)
    _one_line(proc, str(run / "config.json"), "truncated")


@pytest.fixture
def stopped_storage(tmp_path):
  """An emulator that held a bucket with images, then stopped: the
  environment of a client whose storage went down."""
  port = _free_port()
  proc = subprocess.Popen(
      [sys.executable, str(ROOT / "tests" / "gcs_emulator_server.py"),
       "start", "--host", "127.0.0.1", "--port", str(port), "--in-memory",
       f"--default-bucket={BUCKET}"], stdout=subprocess.DEVNULL,
      stderr=subprocess.DEVNULL)
  try:
    deadline = time.time() + 60
    while True:
      try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        break
      except OSError:
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.2)
    env = emulator_env(port)
    write = ("import sys; from fcos_jax import storage; "
             "storage.write_bytes_atomic(sys.argv[1], open(sys.argv[2], "
             "'rb').read())")
    png = tmp_path / "x.png"
    png.write_bytes(_png_bytes())
    subprocess.run([sys.executable, "-c", write,
                    f"gs://{BUCKET}/photos/a.png", str(png)], cwd=ROOT,
                   env=cli_env(**env), check=True, timeout=120)
  finally:
    proc.kill()
    proc.wait(timeout=30)
  return env


def _predict_on_stopped(env, tmp_path):
  return subprocess.Popen(
      [sys.executable, "-m", "fcos_jax.cli.predict",
       f"--workdir=gs://{BUCKET}/run", f"--images=gs://{BUCKET}/photos/*.png",
       f"--out={tmp_path / 'out'}"], cwd=ROOT, env=cli_env(**env),
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_storage_down_ends_in_bounded_time_with_one_line(stopped_storage,
                                                         tmp_path):
  t0 = time.monotonic()
  proc = _predict_on_stopped(stopped_storage, tmp_path)
  out, err = proc.communicate(timeout=BOUND_S + 60)
  took = time.monotonic() - t0
  _one_line(subprocess.CompletedProcess(proc.args, proc.returncode, out, err),
            f"gs://{BUCKET}/photos/*.png", "did not answer", "retries")
  assert took < BOUND_S, took


@pytest.mark.slow
def test_evaluate_with_storage_down_is_one_line(stopped_storage, tmp_path):
  t0 = time.monotonic()
  proc = subprocess.run(
      [sys.executable, "-m", "fcos_jax.cli.evaluate",
       f"--workdir=gs://{BUCKET}/run"], cwd=ROOT,
      env=cli_env(**stopped_storage), capture_output=True, text=True,
      timeout=BOUND_S + 60)
  _one_line(proc, f"gs://{BUCKET}/run", "did not answer", "retries")
  assert time.monotonic() - t0 < BOUND_S


def test_sigterm_ends_a_command_waiting_on_storage(stopped_storage, tmp_path):
  proc = _predict_on_stopped(stopped_storage, tmp_path)
  time.sleep(8)  # Start-up done; now in the client's retries.
  assert proc.poll() is None
  t0 = time.monotonic()
  proc.send_signal(signal.SIGTERM)
  proc.communicate(timeout=30)
  assert time.monotonic() - t0 < 10
  assert proc.returncode != 0
