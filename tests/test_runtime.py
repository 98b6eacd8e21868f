"""fcos_jax.runtime: the mesh, and the private jax objects it relies on."""

import jax
import pytest

from fcos_jax import runtime


def test_mesh_is_one_auto_data_axis_over_the_devices():
  mesh = runtime.make_mesh()
  assert mesh.axis_names == (runtime.DATA_AXIS,)
  assert mesh.axis_types == (jax.sharding.AxisType.Auto,)
  assert list(mesh.devices) == jax.devices()
  assert list(runtime.make_mesh(3).devices) == jax.devices()[:3]


def test_private_jax_objects_are_where_runtime_looks():
  """Fails loudly when a jax release moves the launcher detection or the
  coordination client's barrier (no public API does their job)."""
  from jax._src.lib import _jax
  assert hasattr(_jax.DistributedRuntimeClient, "wait_at_barrier")
  types = runtime._private_jax("cluster_types")
  assert types and all(hasattr(t, "is_env_present") and
                       hasattr(t, "opt_in_only_method") for t in types)
  # One process: no client, and the barrier is a no-op.
  assert runtime._private_jax("coordination_client") is None
  runtime.barrier("test")


def test_a_moved_private_object_is_one_clear_error(monkeypatch):
  from jax._src import distributed
  monkeypatch.delattr(distributed, "global_state")
  with pytest.raises(RuntimeError, match="moved a private object"):
    runtime._private_jax("coordination_client")
