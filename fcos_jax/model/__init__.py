"""FCOS model: ResNet backbone, FPN P3-P7, shared head, presets."""

from fcos_jax.model.config import ModelConfig, PRESETS, official, paper, torchvision
from fcos_jax.model.locations import Locations, compute_locations, level_sizes
