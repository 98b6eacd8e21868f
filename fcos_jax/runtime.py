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


def initialize_distributed() -> None:
  """Joins the processes of a multi-process run, once, before any jax use.

  A Cloud TPU pod slice and SLURM are detected by jax itself. Elsewhere set
  FCOS_COORDINATOR (host:port), FCOS_NUM_PROCESSES and FCOS_PROCESS_ID on
  every process. A single process needs none of these.
  """
  coordinator = os.environ.get("FCOS_COORDINATOR")
  if coordinator:
    jax.distributed.initialize(
        coordinator_address=coordinator,
        num_processes=int(os.environ["FCOS_NUM_PROCESSES"]),
        process_id=int(os.environ["FCOS_PROCESS_ID"]),
        heartbeat_timeout_seconds=int(os.environ.get("FCOS_HEARTBEAT_S", "100")),
        shutdown_timeout_seconds=int(os.environ.get("FCOS_SHUTDOWN_S", "100")))
  elif _on_tpu_pod() or "SLURM_JOB_ID" in os.environ and int(
      os.environ.get("SLURM_NTASKS", "1")) > 1:
    jax.distributed.initialize()
  if jax.process_count() > 1:
    logging.info("Process %d of %d, %d local / %d global devices.",
                 jax.process_index(), jax.process_count(),
                 jax.local_device_count(), jax.device_count())


_barriers = itertools.count()


def compile_everywhere(jitted, *args, name: str = "step",
                       timeout_s: int = 1800) -> None:
  """Compiles `jitted` for `args`, then waits until every process has.

  Only with several processes. The first collective of a step waits for the
  peers to arrive; CPU (gloo) collectives give up after 30 s, so a process
  that compiles a step much faster than another would fail. Compiling ahead
  fills jit's cache: the next call with these shapes runs at once. The wait
  is a barrier of the coordination service, not a device collective (which
  would have the same 30 s limit).
  """
  if jax.process_count() > 1:
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


def _on_tpu_pod() -> bool:
  return bool(os.environ.get("TPU_WORKER_HOSTNAMES", "").count(","))


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
