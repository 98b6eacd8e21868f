"""Overrides shared by the CLI tests: configs/synthetic_cpu.py shrunk to a
seconds-long run (24 images of 128 px, a width-8 model, batch 8); and the
tiny model of the inference and export tests."""

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


def tiny_model(num_classes: int):
  """A width-8 GroupNorm ResNet-18 FCOS taking RGB in [0, 1]; keeps every
  candidate above 0.001 so that random weights give detections."""
  from fcos_jax.model import config as model_presets
  return model_presets.official(
      num_classes=num_classes, depth=18, width=8, freeze_at=0,
      backbone_norm="gn", fpn_channels=32, head_convs=1, gn_groups=8,
      input_bgr=False, input_range=1.0, pixel_mean=(0.5, 0.5, 0.5),
      pixel_std=(0.25, 0.25, 0.25), bn_eps=1e-5, stride_in_1x1=False,
      score_thresh=0.001)
