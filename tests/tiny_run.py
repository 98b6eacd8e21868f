"""Overrides shared by the CLI tests: configs/synthetic_cpu.py shrunk to a
seconds-long run (24 images of 128 px, a width-8 model, batch 8)."""

TINY_RUN = {
    "data.synthetic.num_train": 24,
    "data.synthetic.num_val": 8,
    "data.synthetic.image_size": 128,
    "data.min_size": 128,
    "data.max_size": 128,
    "data.canvases": "((128,128),)",
    "model.width": 8,
    "model.fpn_channels": 32,
    "model.head_convs": 1,
    "model.gn_groups": 8,
    "global_batch_size": 8,
    "eval_batch_size": 8,
    "log_every_steps": 1,
    "async_checkpointing": False,
}


def as_flags(overrides: dict) -> list[str]:
  return [f"--config.{k}={v}" for k, v in overrides.items()]
