"""The commands' progress bars: tqdm on stderr, few lines in a log file,
off with FCOS_JAX_PROGRESS=0."""

import os
import subprocess
import sys

SCRIPT = ("import time\n"
          "from fcos_jax.progress import bar\n"
          "b = bar(3, 'predict')\n"
          "for _ in range(3):\n"
          "  b.update(1)\n"
          "b.close()\n")


def _stderr(**env):
  proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True,
                        text=True, timeout=60, env=dict(os.environ, **env))
  assert proc.returncode == 0, proc.stderr
  return proc.stderr


def test_bar_in_a_log_file_ends_with_the_count_and_rate():
  err = _stderr()
  final = err.replace("\r", "\n").strip().splitlines()[-1]
  assert final.startswith("predict: 100%|") and "3/3" in final, err
  assert "images/s]" in final, err
  assert all(ord(c) < 128 for c in err), err  # ASCII bars in logs.
  assert len(err.replace("\r", "\n").strip().splitlines()) <= 3, err


def test_bar_off_with_the_environment_variable():
  assert _stderr(FCOS_JAX_PROGRESS="0") == ""
