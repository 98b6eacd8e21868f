"""Evaluate an FCOS checkpoint with COCO AP: `fcos-evaluate`
(fcos_jax/cli/evaluate.py), the same command and flags.

  python evaluate.py --workdir /tmp/fcos_synthetic
"""

from fcos_jax.cli import evaluate

if __name__ == "__main__":
  evaluate.run()
