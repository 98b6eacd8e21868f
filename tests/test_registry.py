"""fcos_jax.registry, the one table of released models, and what reads it:
the converters, configs/zoo.py:NAME (one run config per released official
FCOS, AdelaiDet and mmdetection GFL / VFNet / TOOD / ATSS model: the schedule,
batch and multi-scale setting of its source config and the AP its README publishes) and docs/model_zoo.md
(generated from it)."""

import itertools
import pathlib
import subprocess
import sys

import pytest

from fcos_jax import registry
from fcos_jax.configs import torchvision_r50, zoo
from fcos_jax.convert import adelaidet, mmdet, official
from fcos_jax.errors import ConfigError
from fcos_jax.model import config as presets
from fcos_jax.model.config_dict import model_config_from

ROOT = pathlib.Path(__file__).resolve().parents[1]

# The official README's model tables (COCO minival AP), and whether the
# model was trained multi-scale.
README = {
    "FCOS_imprv_R_50_FPN_1x": (38.7, False),
    "FCOS_imprv_dcnv2_R_50_FPN_1x": (42.3, False),
    "FCOS_imprv_R_101_FPN_2x": (43.0, True),
    "FCOS_imprv_dcnv2_R_101_FPN_2x": (45.6, True),
    "FCOS_imprv_X_101_32x8d_FPN_2x": (44.0, True),
    "FCOS_imprv_dcnv2_X_101_32x8d_FPN_2x": (46.4, True),
    "FCOS_imprv_X_101_64x4d_FPN_2x": (44.7, True),
    "FCOS_imprv_dcnv2_X_101_64x4d_FPN_2x": (46.6, True),
    "FCOS_R_50_FPN_1x": (37.1, False),
    "FCOS_R_101_FPN_2x": (41.4, True),
    "FCOS_X_101_32x8d_FPN_2x": (42.5, True),
    "FCOS_X_101_64x4d_FPN_2x": (43.0, True),
    "FCOS_syncbn_bs32_c128_MNV2_FPN_1x": (30.9, False),
    "FCOS_syncbn_bs32_MNV2_FPN_1x": (33.1, False),
    "FCOS_bn_bs16_MNV2_FPN_1x": (31.0, False),
}
# AdelaiDet's configs/FCOS-Detection/README.md (box AP), and multi-scale.
ADELAIDET_README = {
    "FCOS_R_50_1x": (38.7, False),
    "FCOS_MS_R_50_2x": (41.0, True),
    "FCOS_MS_R_101_2x": (43.1, True),
    "FCOS_MS_X_101_32x8d_2x": (43.9, True),
    "FCOS_MS_X_101_64x4d_2x": (44.7, True),
    "FCOS_MS_X_101_32x8d_dcnv2_2x": (46.6, True),
}
# mmdetection's configs/gfl/README.md (box AP), and multi-scale.
MMDET_README = {
    "gfl_r50_fpn_1x_coco": (40.2, False),
    "gfl_r50_fpn_mstrain_2x_coco": (42.9, True),
    "gfl_r101_fpn_mstrain_2x_coco": (44.7, True),
    "gfl_r101_fpn_dconv_c3-c5_mstrain_2x_coco": (47.1, True),
    "gfl_x101_32x4d_fpn_mstrain_2x_coco": (45.9, True),
    "gfl_x101_32x4d_fpn_dconv_c4-c5_mstrain_2x_coco": (48.1, True),
}
# mmdetection's configs/vfnet/README.md (box AP val), and multi-scale.
VFNET_README = {
    "vfnet_r50_fpn_1x_coco": (41.6, False),
    "vfnet_r50_fpn_mstrain_2x_coco": (44.5, True),
    "vfnet_r50_fpn_mdconv_c3-c5_mstrain_2x_coco": (47.8, True),
    "vfnet_r101_fpn_1x_coco": (43.0, False),
    "vfnet_r101_fpn_mstrain_2x_coco": (46.2, True),
    "vfnet_r101_fpn_mdconv_c3-c5_mstrain_2x_coco": (49.0, True),
    "vfnet_x101_32x4d_fpn_mdconv_c3-c5_mstrain_2x_coco": (49.7, True),
    "vfnet_x101_64x4d_fpn_mdconv_c3-c5_mstrain_2x_coco": (50.4, True),
}
# mmdetection's configs/tood/metafile.yml (box AP), and multi-scale: the
# anchor-free models, the dconv one, and the anchor-based one.
TOOD_README = {
    "tood_r50_fpn_1x_coco": (42.4, False),
    "tood_r50_fpn_mstrain_2x_coco": (44.5, True),
    "tood_r101_fpn_mstrain_2x_coco": (46.1, True),
    "tood_x101_64x4d_fpn_mstrain_2x_coco": (47.6, True),
    "tood_r101_fpn_dconv_c3-c5_mstrain_2x_coco": (49.3, True),
    "tood_r50_fpn_anchor_based_1x_coco": (42.4, False),
}
ZOO = {**README, **ADELAIDET_README}
# mmdetection's configs/atss/metafile.yml (box AP).
ATSS_README = {
    "atss_r50_fpn_1x_coco": (39.4, False),
    "atss_r101_fpn_1x_coco": (41.5, False),
}
MMDET_ZOO = {**MMDET_README, **VFNET_README, **TOOD_README, **ATSS_README}


def test_one_record_per_released_model():
  assert sorted(registry.names("official")) == sorted(README)
  assert sorted(registry.names("adelaidet")) == sorted(ADELAIDET_README)
  assert registry.names("torchvision") == ["fcos_resnet50_fpn"]
  assert sorted(registry.names("mmdet")) == sorted(MMDET_ZOO)


def _zoo_config(name, reference, multi_scale_range=(640, 800)):
  """configs/zoo.py:NAME, checked against the README `reference`: AP,
  schedule, training scales, batch; -> (config, its ModelConfig)."""
  ap, multi_scale = reference[name]
  config = zoo.get_config(name)
  release = registry.get(name)
  assert release.ap == ap
  two_x = "_2x" in name
  assert release.schedule == ("2x" if two_x else "1x")
  assert config.num_train_steps == (180000 if two_x else 90000)
  assert tuple(config.optim.decay_steps) == (
      (120000, 160000) if two_x else (60000, 80000))
  assert config.data.min_size == (multi_scale_range if multi_scale else 800)
  batch = 32 if "bs32" in name else 16
  assert config.global_batch_size == config.optim.base_batch_size == batch
  assert release.batch == batch
  assert config.optim.base_lr == 0.01
  cfg = model_config_from(config.model)
  assert cfg.num_classes == 80 and cfg.p6_from == "p5"
  return config, cfg


def _check_resnet(name, config, cfg):
  """The ResNet / ResNeXt of the name, and its ImageNet pickle."""
  assert cfg.backbone == "resnet" and cfg.input_bgr
  assert cfg.depth == (50 if "_50_" in name else 101)
  groups = {"32x8d": (32, 8), "64x4d": (64, 4)}
  x = next((v for k, v in groups.items() if k in name), (1, 64))
  assert (cfg.groups, cfg.width_per_group) == x
  # MSRA ResNets have the stride in the 1x1, FAIR ResNeXts in the 3x3.
  assert cfg.stride_in_1x1 == (x[0] == 1)
  assert bool(cfg.dcn_stages) == cfg.head_dcn == ("dcnv2" in name)
  if cfg.dcn_stages:
    assert cfg.dcn_stages == ((4, 5) if x[0] > 1 else (3, 4, 5))
  assert config.init_backbone_format == "detectron_pkl"
  return x


@pytest.mark.parametrize("name", sorted(README))
def test_zoo_config(name):
  config, cfg = _zoo_config(name, README)
  # Architecture, from the name.
  assert (cfg.quality.on == "reg") == ("imprv" in name)
  if "MNV2" in name:
    assert (cfg.backbone, cfg.freeze_at, cfg.bn_eps) == ("mobilenet_v2", 0, 1e-5)
    assert cfg.fpn_channels == (128 if "c128" in name else 256)
    assert not cfg.dcn_stages and not cfg.head_dcn
    assert config.init_backbone_format == "mobilenet_v2_official"
  else:
    assert cfg.bn_eps == 0.0
    _check_resnet(name, config, cfg)
  # The converter's preset agrees.
  assert cfg == official.published_config(name)


@pytest.mark.parametrize("name", sorted(ADELAIDET_README))
def test_adelaidet_zoo_config(name):
  config, cfg = _zoo_config(name, ADELAIDET_README)
  assert cfg.quality.on == "reg" and cfg.norm_reg_targets
  assert (cfg.bn_eps, cfg.pixel_mean) == (1e-5, (103.530, 116.280, 123.675))
  x = _check_resnet(name, config, cfg)
  # detectron2's FAIR X-101-32x8d takes std-normalised input.
  assert cfg.pixel_std == ((57.375, 57.120, 58.395) if x == (32, 8)
                           else (1.0, 1.0, 1.0))
  assert cfg == adelaidet.published_config(name)


@pytest.mark.parametrize("name", sorted(MMDET_README))
def test_mmdet_zoo_config(name):
  config, cfg = _zoo_config(name, MMDET_README, multi_scale_range=(480, 800))
  # The `gfl` preset: torchvision-style ResNet, RGB ImageNet input, anchor
  # centres at j * s, ATSS assignment; mmdetection's FPN (no ReLU before P7).
  assert (cfg.quality.name, cfg.loss.name, cfg.assign.name) == (
      "gfl_joint", "gfl", "atss")
  assert cfg.quality.reg_max == 16 and not cfg.p7_relu
  assert not cfg.stride_in_1x1 and not cfg.input_bgr and cfg.bn_eps == 1e-5
  assert cfg.location_offset == "zero" and not cfg.head_dcn
  # dconv_c3-c5 / c4-c5: mmcv's DCN (v1, no mask) in those stages.
  dcn = {"dconv_c3-c5": (3, 4, 5), "dconv_c4-c5": (4, 5)}
  assert cfg.dcn_stages == next((v for k, v in dcn.items() if k in name), ())
  assert cfg.dcn_modulated is not bool(cfg.dcn_stages)
  assert cfg.depth == (50 if "_r50_" in name else 101)
  assert (cfg.groups, cfg.width_per_group) == (
      (32, 4) if "x101_32x4d" in name else (1, 64))
  assert config.init_backbone_format == "torchvision_resnet"
  release = registry.get(name)
  stamp = release.url.rsplit("/", 1)[-1][len(name) + 1:-len(".pth")]
  assert release.url == ("https://download.openmmlab.com/mmdetection/v2.0/"
                         f"gfl/{name}/{name}_{stamp}.pth")
  assert release.checksum == stamp[-8:] and release.licence == "Apache-2.0"
  assert cfg == mmdet.published_config(name)


@pytest.mark.parametrize("name", sorted(VFNET_README))
def test_mmdet_vfnet_zoo_config(name):
  config, cfg = _zoo_config(name, VFNET_README, multi_scale_range=(480, 960))
  # The `vfnet` preset; mmdetection's VFNet FPN has relu_before_extra_convs.
  assert (cfg.quality.name, cfg.loss.name, cfg.assign.name) == (
      "vfnet", "vfnet", "atss")
  assert cfg.p7_relu and cfg.head_convs == 3 and not cfg.norm_reg_targets
  assert not cfg.stride_in_1x1 and not cfg.input_bgr and cfg.bn_eps == 1e-5
  assert cfg.location_offset == "zero"
  # mdconv_c3-c5: mmcv's DCNv2 in res3-res5 and as the towers' last conv.
  mdconv = "_mdconv_c3-c5_" in name
  assert cfg.dcn_stages == ((3, 4, 5) if mdconv else ())
  assert cfg.head_dcn is mdconv and cfg.dcn_modulated
  assert cfg.depth == (50 if "_r50_" in name else 101)
  groups = {"x101_32x4d": (32, 4), "x101_64x4d": (64, 4)}
  assert (cfg.groups, cfg.width_per_group) == next(
      (v for k, v in groups.items() if k in name), (1, 64))
  assert config.init_backbone_format == "torchvision_resnet"
  release = registry.get(name)
  stamp = release.url.rsplit("/", 1)[-1][len(name) + 1:-len(".pth")]
  assert release.url == ("https://download.openmmlab.com/mmdetection/v2.0/"
                         f"vfnet/{name}/{name}_{stamp}.pth")
  assert release.checksum == stamp[-8:] and release.licence == "Apache-2.0"
  assert cfg == mmdet.published_config(name)


@pytest.mark.parametrize("name", sorted(TOOD_README))
def test_mmdet_tood_zoo_config(name):
  config, cfg = _zoo_config(name, TOOD_README, multi_scale_range=(480, 800))
  # The `tood` preset (anchor_free); mmdetection's FPN without a ReLU
  # before P7.
  assert (cfg.quality.name, cfg.loss.name, cfg.assign.name) == (
      "tood", "tood", "tal")
  assert not cfg.p7_relu and cfg.head_convs == 6
  # dconv: mmcv's DCNv2 in res3-res5 and the T-head's first 2 inter convs.
  dconv = "_dconv_c3-c5_" in name
  assert cfg.dcn_stages == ((3, 4, 5) if dconv else ())
  assert (cfg.quality.num_dcn, cfg.dcn_modulated) == (
      (2, True) if dconv else (0, cfg.dcn_modulated))
  # mmdetection's test_cfg: empty boxes dropped, TOOD's boxes not clipped.
  assert cfg.inference.min_box_size == 0 and not cfg.inference.clip_boxes
  # anchor_type: DeltaXYWH deltas from an 8-stride anchor, or distances.
  assert cfg.box.name == ("anchor_deltas" if "anchor_based" in name
                          else "distances")
  assert not cfg.stride_in_1x1 and not cfg.input_bgr and cfg.bn_eps == 1e-5
  assert cfg.depth == (50 if "_r50_" in name else 101)
  assert (cfg.groups, cfg.width_per_group) == (
      (64, 4) if "x101_64x4d" in name else (1, 64))
  assert config.init_backbone_format == "torchvision_resnet"
  release = registry.get(name)
  stamp = release.url.rsplit("/", 1)[-1][len(name) + 1:-len(".pth")]
  assert release.url == ("https://download.openmmlab.com/mmdetection/v2.0/"
                         f"tood/{name}/{name}_{stamp}.pth")
  assert release.checksum == stamp[-8:] and release.licence == "Apache-2.0"
  assert cfg == mmdet.published_config(name)


@pytest.mark.parametrize("name", sorted(ATSS_README))
def test_mmdet_atss_zoo_config(name):
  config, cfg = _zoo_config(name, ATSS_README)
  # The `atss_anchor` preset: ATSSHead's anchor deltas, centre-ness on the
  # box tower; mmdetection's FPN without a ReLU before P7.
  assert (cfg.quality.name, cfg.loss.name, cfg.assign.name, cfg.box.name) == (
      "centerness", "atss", "atss", "anchor_deltas")
  assert cfg.box.target_stds == (0.1, 0.1, 0.2, 0.2)
  assert cfg.box.anchor_scale == cfg.assign.anchor_scale == 8
  assert cfg.quality.on == "reg" and cfg.loss.reg_weight == 2.0
  assert not cfg.p7_relu and cfg.head_convs == 4 and not cfg.dcn_stages
  assert not cfg.norm_reg_targets and cfg.location_offset == "zero"
  assert not cfg.stride_in_1x1 and not cfg.input_bgr and cfg.bn_eps == 1e-5
  assert cfg.depth == (50 if "_r50_" in name else 101)
  assert config.init_backbone_format == "torchvision_resnet"
  release = registry.get(name)
  # The R-101's file is named atss_r101_fpn_1x_STAMP.pth (metafile.yml).
  file = {"atss_r50_fpn_1x_coco": "atss_r50_fpn_1x_coco_20200209-985f7bd0",
          "atss_r101_fpn_1x_coco": "atss_r101_fpn_1x_20200825-dfcadd6f"}[name]
  assert release.url == ("https://download.openmmlab.com/mmdetection/v2.0/"
                         f"atss/{name}/{file}.pth")
  assert release.checksum == file[-8:] and release.licence == "Apache-2.0"
  assert cfg == mmdet.published_config(name)


def test_no_zoo_config_repeats_another():
  configs = {n: zoo.get_config(n).to_dict() for n in {**ZOO, **MMDET_ZOO}}
  for a, b in itertools.combinations(configs, 2):
    assert configs[a] != configs[b], (a, b)


def test_unknown_model_is_refused_in_one_line():
  for call in (lambda: zoo.get_config("FCOS_R_18"), zoo.get_config):
    with pytest.raises(ConfigError) as e:
      call()
    assert "\n" not in str(e.value)
    assert all(n in str(e.value) for n in {**ZOO, **MMDET_ZOO})
    assert "fcos_resnet50_fpn" not in str(e.value)
  with pytest.raises(ValueError, match="Unknown AdelaiDet FCOS model"):
    adelaidet.published_config("FCOS_imprv_R_50_FPN_1x")


def test_unknown_model_on_the_command_line():
  proc = subprocess.run(
      [sys.executable, "-m", "fcos_jax.cli.convert", "--official=x.npz",
       "--config=configs/zoo.py:FCOS_R_18", "--workdir=unused"],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2
  first, *rest = proc.stderr.strip().splitlines()
  assert first.startswith("error: --config: Unknown official FCOS, "
                          "AdelaiDet FCOS or mmdetection GFL / VFNet / TOOD / ATSS "
                          "model "
                          "'FCOS_R_18'; known: ")
  assert "FCOS_MS_R_101_2x" in first and "Traceback" not in proc.stderr
  assert rest == ["Pass --helpshort or --helpfull to see help on flags."]


def test_torchvision_record():
  release = registry.get("fcos_resnet50_fpn")
  assert (release.source, release.ap, release.checksum) == (
      "torchvision", 39.2, "99b0c9b7")
  assert release.url == ("https://download.pytorch.org/models/"
                         "fcos_resnet50_fpn_coco-99b0c9b7.pth")
  assert release.model_config() == presets.torchvision(num_classes=80)
  assert model_config_from(torchvision_r50.get_config().model) == (
      release.model_config())
  assert release.licence == "BSD-3-Clause"


def test_weights_and_licences():
  for name in ZOO:
    release = registry.get(name)
    repo = {"official": "FCOS", "adelaidet": "AdelaiDet-FCOS"}[release.source]
    assert release.url == (f"https://huggingface.co/tianzhi/{repo}/resolve/"
                           f"main/{name}.pth?download=true")
    assert release.checksum is None
    assert release.licence.startswith("non-commercial use only")


def test_model_zoo_doc_is_generated_from_the_registry():
  doc = (ROOT / "docs" / "model_zoo.md").read_text()
  assert doc == registry.markdown(), (
      "docs/model_zoo.md is stale: python -m fcos_jax.registry > "
      "docs/model_zoo.md")
  assert "python -m fcos_jax.registry > docs/model_zoo.md" in doc[:400]
  assert "published, not\nmeasured here" in doc
  assert "**non-commercial use only**" in doc
  for name, release in registry.MODELS.items():
    row = next(line for line in doc.splitlines()
               if line.startswith(f"| {name} |") and "fcos-convert" in line)
    assert release.url in row and release.licence in row
    pth = (release.url.rsplit("/", 1)[-1] if release.source == "mmdet"
           else f"{name}.pth")
    if release.source != "torchvision":
      assert (f"--{release.source} {pth} --config configs/zoo.py:{name} "
              in row)
  # The page is linked from the docs that used to hold the tables.
  assert "model_zoo.md" in (ROOT / "docs" / "predict_and_export.md").read_text()
  assert "docs/model_zoo.md" in (ROOT / "README.md").read_text()


def test_generator_command_prints_the_page():
  proc = subprocess.run([sys.executable, "-m", "fcos_jax.registry"],
                        cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout == registry.markdown()


def test_every_release_names_its_imagenet_start():
  for release in registry.MODELS.values():
    start = registry.imagenet_start(release)
    assert start.init_format == release.init_format, release.name
  for start in registry.IMAGENET_STARTS:
    assert registry._file(start.url) == start.file  # pylint: disable=protected-access
    assert start.url.startswith("https://") and start.licence
    if start.checksum:  # torchvision's: the sha256 prefix in the file name.
      assert start.file.rsplit(".", 1)[0].endswith("-" + start.checksum)
    # Each start is used: the command that trains from it names a config.
    assert f"--config.init_backbone={start.file}" in registry.train_command(
        start)
  pairs = [(i.file, s) for i in registry.IMAGENET_STARTS for s in i.sources]
  assert len(pairs) == len(set(pairs)), "one copy per file and source"


def test_weights_page_is_generated_from_the_registry():
  doc = (ROOT / "docs" / "weights.md").read_text()
  assert doc == registry.weights_markdown(), (
      "docs/weights.md is stale: python -m fcos_jax.registry weights > "
      "docs/weights.md")
  for release in registry.MODELS.values():
    row = next(line for line in doc.splitlines()
               if line.startswith(f"| {release.name} |"))
    assert release.url in row and release.licence in row
    assert f"`{registry.convert_command(release)}`" in row
  for start in registry.IMAGENET_STARTS:
    assert start.url in doc and start.licence in doc
  assert "(docs/weights.md)" in (ROOT / "README.md").read_text()
  proc = subprocess.run([sys.executable, "-m", "fcos_jax.registry", "weights"],
                        cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout == doc
