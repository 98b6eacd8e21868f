"""Timing and memory helpers shared by the benchmarks (no jax, no torch)."""

from __future__ import annotations

import os
import statistics
import threading
import time

_PAGE = os.sysconf("SC_PAGE_SIZE")


def stats(values) -> dict:
  """min / median / max of a list of numbers (and the raw values)."""
  values = list(values)
  return {"min": min(values), "median": statistics.median(values),
          "max": max(values), "n": len(values), "values": values}


def rss_bytes() -> int:
  """Resident set size of this process now (Linux /proc)."""
  with open("/proc/self/statm") as f:
    return int(f.read().split()[1]) * _PAGE


class RssPeak:
  """Samples RSS in a thread; `delta()` is the peak of the last `with` block
  minus the RSS at its start (the extra host memory one call needed)."""

  def __init__(self, interval_s: float = 0.02):
    self.interval_s = interval_s
    self._base = self._peak = 0
    self._stop = threading.Event()
    self._thread = None

  def _sample(self):
    while not self._stop.wait(self.interval_s):
      self._peak = max(self._peak, rss_bytes())

  def __enter__(self):
    self._base = self._peak = rss_bytes()
    self._stop.clear()
    self._thread = threading.Thread(target=self._sample, daemon=True)
    self._thread.start()
    return self

  def __exit__(self, *exc):
    self._stop.set()
    self._thread.join()
    self._peak = max(self._peak, rss_bytes())

  def delta(self) -> int:
    return self._peak - self._base


def time_interleaved(fns: dict, repeats: int, warmup: int = 1,
                     memory: bool = False, block: int = 1) -> dict:
  """Seconds per call of each fn (name -> zero-argument callable that blocks
  until its result is ready), after `warmup` calls each. The fns take turns,
  so that a shared, busy machine slows them alike; each turn is `block`
  consecutive calls (every one timed), for runtimes that pay for a switch
  (TF's and XLA's thread pools spinning after the other's call), as a
  served model runs call after call.

  Returns name -> {"s": stats of seconds, "rss_delta_bytes": max over the
  timed calls of the RSS peak minus the RSS before the call (if memory)}.
  """
  for fn in fns.values():
    for _ in range(warmup):
      fn()
  times = {name: [] for name in fns}
  rss = {name: 0 for name in fns}
  for _ in range(repeats):
    for name, fn in [kv for kv in fns.items() for _ in range(block)]:
      if memory:
        with RssPeak() as peak:
          start = time.perf_counter()
          fn()
          times[name].append(time.perf_counter() - start)
        rss[name] = max(rss[name], peak.delta())
      else:
        start = time.perf_counter()
        fn()
        times[name].append(time.perf_counter() - start)
  out = {}
  for name in fns:
    out[name] = {"s": stats(times[name])}
    if memory:
      out[name]["rss_delta_bytes"] = rss[name]
  return out
