"""The FCOS paper's own measurements: `fcos-analyze`
(fcos_jax/cli/analyze.py), the same command and flags.

  python analyze.py bpr --config configs/synthetic_cpu.py --out /tmp/analysis
"""

from fcos_jax.cli import analyze

if __name__ == "__main__":
  analyze.run()
