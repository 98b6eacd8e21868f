"""The commands' progress bars, one style: tqdm on stderr.

On a terminal the bar is redrawn in place; in a log file or a pipe (not a
TTY: CI, a cloud job's log) it is redrawn at most every 10 s, so a long
prediction or evaluation leaves a few lines, not thousands.
`FCOS_JAX_PROGRESS=0` turns every bar off.
"""

from __future__ import annotations

import os
import sys

from tqdm import tqdm


def bar(total: int, desc: str, unit: str = " images", enabled: bool = True,
        **kwargs) -> tqdm:
  """A progress bar over `total` items (use as a context manager or call
  `.update(n)` then `.close()`). enabled=False: a silent one (e.g. on the
  processes other than 0 of a multi-host job)."""
  tty = sys.stderr.isatty()
  return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr,
              mininterval=0.5 if tty else 10.0, dynamic_ncols=tty,
              ascii=not tty,
              disable=not enabled or os.environ.get(
                  "FCOS_JAX_PROGRESS", "1") == "0", **kwargs)
