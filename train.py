"""Train FCOS: `fcos-train` (fcos_jax/cli/train.py), the same command and flags.

  python train.py --config configs/synthetic_cpu.py --workdir /tmp/fcos_synthetic
"""

from fcos_jax.cli import train

if __name__ == "__main__":
  train.run()
