"""Process-level set-up shared by train.py, evaluate.py and the benchmarks:
multi-process start, the persistent compilation cache, the device mesh."""

from __future__ import annotations

import itertools
import logging
import os

import jax
import numpy as np
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
  from jax._src import clusters  # jax's own launcher detection.
  return any(not env.opt_in_only_method and env.is_env_present()
             for env in clusters.ClusterEnv._cluster_types)


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
  jitted.lower(*args).compile()
  barrier(f"{name}_compiled", timeout_s)


def barrier(name: str, timeout_s: int = 1800) -> None:
  """Waits until every process gets here (no-op with one process).

  A barrier of jax's coordination service, not a device collective: it
  waits up to `timeout_s`, where CPU (gloo) collectives give up after 30 s.
  """
  if jax.process_count() > 1:
    from jax._src import distributed  # The client jax.distributed started.
    distributed.global_state.client.wait_at_barrier(
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
  """A 1-D data-parallel mesh over all devices of all processes."""
  devices = jax.devices()
  if num_devices:
    devices = devices[:num_devices]
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS))
