"""The zoo forward-cost benchmark: analytic FLOPs of ResNeXt and
MobileNetV2 equal torch's FLOP counter on torchvision's own modules, and the
smoke run prints every model with XLA's count near the analytic one."""

import pytest

from benchmarks import bench_zoo, flops
from fcos_jax.model import config as config_lib


def _torch_backbone_flops(model, body, hw):
  import torch  # pylint: disable=import-outside-toplevel
  from torch.utils.flop_counter import FlopCounterMode  # pylint: disable=import-outside-toplevel
  counter = FlopCounterMode(display=False)
  with torch.no_grad(), counter:
    body(model, torch.zeros(1, 3, *hw, device="meta"))
  return counter.get_total_flops()


@pytest.mark.torch
@pytest.mark.parametrize("arch", ["resnext101_64x4d", "resnext50_32x4d",
                                  "mobilenet_v2"])
def test_analytic_backbone_flops_equal_torch_counter(arch):
  pytest.importorskip("torch")
  torchvision = pytest.importorskip("torchvision")
  from fcos_jax.convert.imagenet import TORCHVISION_ARCHS
  hw = (224, 320)
  import torch  # pylint: disable=import-outside-toplevel
  with torch.device("meta"):  # Shapes only: no weights, no arithmetic.
    model = getattr(torchvision.models, arch)(weights=None).eval()
  if arch == "mobilenet_v2":
    body = lambda m, x: m.features[:18](x)
  else:
    body = lambda m, x: m.layer4(m.layer3(m.layer2(m.layer1(m.maxpool(
        m.relu(m.bn1(m.conv1(x))))))))
  cfg = config_lib.torchvision(**TORCHVISION_ARCHS[arch])
  ours = flops.analytic_forward_flops(cfg, hw)["backbone"]
  # The C2 stage of ResNets and features[1..3] of MNV2 are counted too:
  # FCOS runs them (only their output is unused).
  assert ours == _torch_backbone_flops(model, body, hw)


@pytest.mark.slow
def test_smoke_run_lists_every_model(capsys):
  r = bench_zoo.run(smoke=True, repeats=1)
  assert list(r["rows"]) == ["R-50", "X-101-64x4d", "MNV2", "dcnv2-R-50"]
  for name, row in r["rows"].items():
    assert row["s"]["median"] > 0
    if name != "dcnv2-R-50":  # XLA also counts the deformable sampling.
      assert row["xla_gflop"] == pytest.approx(row["analytic_gflop"], rel=0.15)
  bench_zoo.print_table(r)
  out = capsys.readouterr().out
  assert "X-101-64x4d" in out and "dcnv2-R-50" in out
