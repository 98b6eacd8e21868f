"""Process-level set-up shared by train.py, evaluate.py and the benchmarks:
multi-process start, the persistent compilation cache, the device mesh."""

from __future__ import annotations

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
