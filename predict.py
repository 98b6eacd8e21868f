"""Run a trained (or converted) FCOS on image files: `fcos-predict`
(fcos_jax/cli/predict.py), the same command and flags.

  python predict.py --workdir /tmp/fcos_synthetic --images photos/ --out /tmp/pred --draw
"""

from fcos_jax.cli import predict

if __name__ == "__main__":
  predict.run()
