"""Process-level set-up shared by train.py, evaluate.py and the benchmarks:
multi-process start, the persistent compilation cache, the device mesh."""

from __future__ import annotations

import itertools
import logging
import os
import time

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def initialize_distributed(options=None) -> None:
  """Joins the processes of a multi-process run, once, before any jax use.

  jax.distributed.initialize() finds the processes by itself on Cloud TPU
  pods, under SLURM, Open MPI (mpirun) and Kubernetes; elsewhere set
  JAX_COORDINATOR_ADDRESS (host:port), JAX_NUM_PROCESSES and JAX_PROCESS_ID
  on every process. A single process needs none of these.

  options: `config.distributed` (timeouts in seconds), or None.
  """
  if jax.distributed.is_initialized() or not _launched_as_cluster():
    return
  options = options or {}
  kwargs = {}
  if os.environ.get("JAX_NUM_PROCESSES"):
    kwargs = dict(num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
                  process_id=int(os.environ["JAX_PROCESS_ID"]))
  jax.distributed.initialize(
      initialization_timeout=int(options.get("initialization_timeout_s", 300)),
      heartbeat_timeout_seconds=int(options.get("heartbeat_timeout_s", 100)),
      shutdown_timeout_seconds=int(options.get("shutdown_timeout_s", 100)),
      **kwargs)
  if jax.process_count() > 1:
    logging.info("Process %d of %d, %d local / %d global devices.",
                 jax.process_index(), jax.process_count(),
                 jax.local_device_count(), jax.device_count())


def _launched_as_cluster() -> bool:
  """Whether a launcher jax knows (or JAX_COORDINATOR_ADDRESS) started us."""
  if os.environ.get("JAX_COORDINATOR_ADDRESS"):
    return True
  return any(not env.opt_in_only_method and env.is_env_present()
             for env in _private_jax("cluster_types"))


def _private_jax(what: str):
  """The two private jax objects this project needs, found in one place.

  No public API does their job: "cluster_types" is jax.distributed's own
  launcher detection (to call initialize() only under a launcher), and
  "coordination_client" the client jax.distributed started, whose barrier
  waits as long as we ask (a device collective, e.g.
  multihost_utils.sync_global_devices, gives up after 30 s on CPU/gloo).
  tests/test_runtime.py fails when a jax release moves either.
  """
  try:
    if what == "cluster_types":
      from jax._src import clusters
      return clusters.ClusterEnv._cluster_types
    from jax._src import distributed
    client = distributed.global_state.client
    if client is not None and not hasattr(client, "wait_at_barrier"):
      raise AttributeError("the coordination client has no wait_at_barrier")
    return client
  except (ImportError, AttributeError) as e:
    raise RuntimeError(
        f"jax {jax.__version__} moved a private object fcos_jax.runtime uses "
        f"({what}: {e}); pin the jax of requirements.txt or update "
        "fcos_jax/runtime.py:_private_jax.") from e


_barriers = itertools.count()


def compile_everywhere(jitted, *args, name: str = "step",
                       timeout_s: int = 1800) -> None:
  """Compiles `jitted` for `args` now, then waits until every process has.

  Compiling ahead fills jit's cache (the next call with these shapes runs at
  once) and keeps compile time out of the step timings. With several
  processes, the first collective of a step waits for the peers to arrive;
  CPU (gloo) collectives give up after 30 s, so a process that compiles much
  faster than another would fail without the barrier.
  """
  # A line before the silent minute (a cold compile on a small CPU), and
  # its time after (seconds when the persistent cache has it).
  logging.info("Compiling %s (cached for later runs once compiled)...",
               name)
  start = time.perf_counter()
  jitted.lower(*args).compile()
  logging.info("Compiled %s in %.1f s.", name, time.perf_counter() - start)
  barrier(f"{name}_compiled", timeout_s)


def barrier(name: str, timeout_s: int = 1800) -> None:
  """Waits until every process gets here (no-op with one process).

  A barrier of jax's coordination service, not a device collective: it
  waits up to `timeout_s`, where CPU (gloo) collectives give up after 30 s.
  """
  if jax.process_count() > 1:
    _private_jax("coordination_client").wait_at_barrier(
        f"fcos_jax_{name}_{next(_barriers)}", timeout_s * 1000)


def chief_first(fn, name: str, timeout_s: int = 3600):
  """Runs `fn` on process 0, then on the others once it has finished.

  For things written once for all (a generated dataset, an export): `fn`
  must reuse a finished result, so the others only find what process 0 made.
  """
  result = fn() if jax.process_index() == 0 else None
  barrier(name, timeout_s)
  return result if jax.process_index() == 0 else fn()


def enable_compilation_cache(directory: str | None) -> None:
  """Persistent XLA cache: repeated compiles of the same step are 5-7x cheaper."""
  if not directory:
    return
  directory = os.path.expanduser(directory)
  jax.config.update("jax_compilation_cache_dir", directory)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def make_mesh(num_devices: int | None = None) -> Mesh:
  """A 1-D data-parallel mesh over all devices of all processes (or the
  first `num_devices`).

  The axis is Auto: the steps' shardings are given at jit's boundary and
  XLA propagates them inside.
  """
  devices = jax.devices()
  if num_devices:
    devices = devices[:num_devices]
  return jax.make_mesh((len(devices),), (DATA_AXIS,),
                       axis_types=(jax.sharding.AxisType.Auto,),
                       devices=devices)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS))
