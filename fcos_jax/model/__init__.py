"""FCOS model: ResNet / ResNeXt / MobileNetV2 backbone, FPN P3-P7, shared head,
presets."""

from fcos_jax.model.config import ModelConfig, PRESETS, official, paper, rpn, torchvision
from fcos_jax.model.fcos import FCOS, init_variables
from fcos_jax.model.preprocess import normalize_images
