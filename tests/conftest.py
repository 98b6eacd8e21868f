"""Test set-up: 8 fake CPU devices and a persistent compilation cache.

Both must be set before jax is imported anywhere.
"""

import collections
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


# The files that take longest (pytest --durations, 2026-12-07), started
# first: a scheduling hint for pytest-xdist, nothing else depends on it.
_LONGEST_FIRST = (
    "run/test_faults.py", "train/test_scale_out.py", "train/test_preemption.py",
    "run/test_run_safety.py", "cli/test_family_variants_cli.py",
    "cli/test_train_cli.py", "analysis/test_analysis_cli.py",
    "run/test_gcs_workdir.py", "run/test_storage_down_while_training.py",
    "model/test_batch_norm.py", "cli/test_vfnet_cli.py",
    "cli/test_tood_cli.py", "convert/test_convert_mmdet.py",
    "cli/test_convert_mmdet_cli.py",
    "cli/test_convert_cli.py",
    "model/test_backbones.py", "benchmark_harness/test_bench_family.py",
    "cli/test_tta_cli.py", "cli/test_gfl_cli.py", "model/test_model.py",
    "export/test_export.py")


def pytest_collection_modifyitems(items):
  """The longest files first, then those with the most slow end-to-end
  tests (stable otherwise): with the suite spread over processes
  (pytest-xdist, `--dist loadfile --no-loadscope-reorder` in pytest.ini),
  a long file that starts last would run alone at the end."""
  tests = pathlib.Path(__file__).parent
  rank = {tests / name: i for i, name in enumerate(_LONGEST_FIRST)}
  slow = collections.Counter(item.path for item in items
                             if item.get_closest_marker("slow"))
  items.sort(key=lambda item: (rank.get(item.path, len(rank)),
                               -slow[item.path]))
