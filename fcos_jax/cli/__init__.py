"""The command-line shell of fcos_jax: one module per command, each with
its flags, `main(argv)` and `run()` (the console script's entry point):

  fcos-train     fcos_jax.cli.train      (python train.py)
  fcos-evaluate  fcos_jax.cli.evaluate   (python evaluate.py)
  fcos-predict   fcos_jax.cli.predict    (python predict.py)
  fcos-analyze   fcos_jax.cli.analyze    (python analyze.py)
  fcos-convert   fcos_jax.cli.convert    (python -m fcos_jax.cli.convert)
  fcos-export    fcos_jax.cli.export     (python -m fcos_jax.cli.export)

`common` holds what they share: logging and process set-up, flag parsing
(--config by path or by packaged name, --version) and the error policy.
Import one command module per process: each defines its flags on absl's
global FLAGS.
"""
