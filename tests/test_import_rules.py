"""The layer rule of docs/architecture.md, as import-linter checks it: no
package of fcos_jax imports one above it (the contract is .importlinter)."""

import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_no_package_imports_one_above_it():
  lint = pathlib.Path(sys.executable).parent / "lint-imports"
  proc = subprocess.run(
      [str(lint), str(ROOT / ".importlinter"), "--no-cache"],
      cwd=ROOT, capture_output=True, text=True, timeout=300,
      env=dict(os.environ, PYTHONPATH=str(ROOT)))
  assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
  assert "1 kept, 0 broken" in proc.stdout
