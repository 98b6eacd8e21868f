"""Reading weights files without running what they ask for.

A `.pth` is read by `torch.load(weights_only=True)` and a Detectron `.pkl`
by an unpickler that builds only arrays (`imagenet.py`): a file that asks
for anything else (a callable, a class of its own) is refused before
anything is built, as `RefusedPickle`, one line naming the file and what
it asked for (not torch's advice to load it with weights_only=False).
"""

from __future__ import annotations

import io
import pickle
import pickletools
import re

from fcos_jax import errors


class RefusedPickle(errors.DataError, pickle.UnpicklingError):
  """A weights file that asks to build something other than arrays and
  plain containers (it could run code); nothing of it was run."""


def refused(path: str, what: str) -> RefusedPickle:
  return RefusedPickle(
      f"{path}: refused to load {what}: a weights file holds only tensors "
      "and plain containers, and this one asks for something else (it "
      "could run code). Nothing was run; get the file from a trusted "
      "source, or save just its state dict of tensors.")


def torch_load(path: str, data: bytes):
  """torch.load(weights_only=True) of `data` (the bytes of `path`); a
  refused global or a damaged file is one DataError naming `path`."""
  import torch  # pylint: disable=import-outside-toplevel  (caller checked)
  try:
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
  except pickle.UnpicklingError as e:
    text = str(e)
    opcode = re.search(r"Unsupported operand (\d+)", text)
    if opcode and not _is_pickle_opcode(int(opcode.group(1))):
      # Not an opcode at all: bytes that are no pickle (a damaged or
      # foreign file), not a pickle asking for too much.
      raise errors.DataError(
          f"{path}: not a readable PyTorch weights file (byte "
          f"{int(opcode.group(1))} is no pickle opcode); it may be damaged "
          "or not a .pth at all.") from None
    found = re.search(r"unsupported GLOBAL ([\w.]+)", text) or re.search(
        r"Unsupported (?:global|operand)[^:]*: (?:GLOBAL )?([\w.<>]+)", text)
    if found or "Weights only load failed" in text:
      raise refused(path, found.group(1) if found else "an unsupported "
                    "object") from None
    raise errors.DataError(f"{path}: not a readable PyTorch weights file "
                           f"({_first_line(text)}).") from None
  except (RuntimeError, EOFError, KeyError, ValueError, IndexError,
          AttributeError) as e:
    raise errors.DataError(
        f"{path}: not a readable PyTorch weights file ({type(e).__name__}: "
        f"{_first_line(str(e))}); it may be truncated or not a .pth at all."
    ) from None


def _is_pickle_opcode(byte: int) -> bool:
  return 0 <= byte < 256 and chr(byte) in {op.code for op in pickletools.opcodes}


def _first_line(text: str) -> str:
  line = text.strip().splitlines()[0] if text.strip() else ""
  return line[:200]
