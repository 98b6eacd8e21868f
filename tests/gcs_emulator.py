"""A real Cloud Storage API on loopback for tests: gcp-storage-emulator
(through tests/gcs_emulator_server.py, which adds the generation header
real GCS sends).

`gcs` (a pytest fixture, module scope) starts the emulator on a free
127.0.0.1 port with one bucket, puts the variables that point every client
at it into os.environ (for this process) and returns them (for the CLIs it
starts), and stops the emulator by its pid at the end.

Which client each path takes (see README, "Where gs:// files go"):
- etils.epath (config.json, categories.json, eval JSONs, COCO JSONs,
  images, TensorBoard copies, orbax's metadata) -> gcsfs, with
  EPATH_USE_TF=false (TF's own GCS client has no endpoint override);
- orbax's array data -> tensorstore, with TENSORSTORE_GCS_HTTP_URL;
- no credentials are looked up anywhere (fixed test token, and the GCE
  metadata server pointed at a closed loopback port).
"""

import os
import pathlib
import socket
import subprocess
import sys
import time

import pytest

BUCKET = "fcos-test-bucket"


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def emulator_env(port: int) -> dict[str, str]:
  url = f"http://127.0.0.1:{port}"
  return {
      "STORAGE_EMULATOR_HOST": url,  # gcsfs, google-cloud-storage.
      "EPATH_USE_TF": "false",  # etils.epath (and orbax) through gcsfs.
      "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",  # No storage-control API.
      "TENSORSTORE_GCS_HTTP_URL": url,  # orbax's array data.
      "GOOGLE_AUTH_TOKEN_FOR_TESTING": "test",  # tensorstore: no auth lookup.
      "NO_GCE_CHECK": "true",  # google-auth: no metadata-server probe.
      "GCE_METADATA_HOST": "127.0.0.1:1",
      "GCE_METADATA_IP": "127.0.0.1:1",
      "GCE_METADATA_ROOT": "127.0.0.1:1",
      "GOOGLE_CLOUD_PROJECT": "test",
  }


def _forget_epath_backend():
  """etils caches its TF-or-gcsfs choice at first use: make it read
  EPATH_USE_TF again (in this test process only; the CLIs start fresh)."""
  from etils.epath import gpath
  gpath._is_tf_installed.cache_clear()


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
  port = _free_port()
  log = open(tmp_path_factory.mktemp("gcs") / "emulator.log", "w")
  proc = subprocess.Popen(
      [sys.executable, str(pathlib.Path(__file__).with_name(
          "gcs_emulator_server.py")), "start", "--host",
       "127.0.0.1", "--port", str(port), "--in-memory",
       f"--default-bucket={BUCKET}"], stdout=log, stderr=subprocess.STDOUT)
  env = emulator_env(port)
  saved = {k: os.environ.get(k) for k in env}
  try:
    deadline = time.time() + 60
    while True:
      assert proc.poll() is None, "the GCS emulator did not start"
      try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        break
      except OSError:
        assert time.time() < deadline, "the GCS emulator did not listen"
        time.sleep(0.2)
    os.environ.update(env)
    _forget_epath_backend()
    yield env
  finally:
    for k, v in saved.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v
    _forget_epath_backend()
    proc.kill()
    proc.wait(timeout=30)
    log.close()
