"""Test set-up: 8 fake CPU devices and a persistent compilation cache.

Both must be set before jax is imported anywhere.
"""

import os
import pathlib

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
_CACHE = os.environ.setdefault(
    "FCOS_JAX_COMPILATION_CACHE",
    str(pathlib.Path.home() / ".cache" / "fcos_jax" / "jax_cache"))

# torchvision (with the triton of torch's CUDA wheels) segfaults when it is
# first imported after TensorFlow; the parity tests import it late, after
# the data tests have loaded TF, so load it first when it is installed.
try:
  import torchvision  # noqa: F401,E402  pylint: disable=unused-import
except ImportError:
  pass

from fcos_jax import runtime  # noqa: E402  (imports jax: after the flags)

runtime.enable_compilation_cache(_CACHE)  # As the CLIs do.


def pytest_collection_modifyitems(items):
  """Files with slow end-to-end tests first (stable otherwise): with the
  suite spread over processes (pytest-xdist, `--dist loadfile` in
  pytest.ini), a long file that starts last would run alone at the end."""
  slow_files = {item.path for item in items if item.get_closest_marker("slow")}
  items.sort(key=lambda item: item.path not in slow_files)
