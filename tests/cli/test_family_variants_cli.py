"""The FCOS family's synthetic configs (IoU quality, ATSS, P2) train and
evaluate through train.py, and analyze.py bpr reads their rules."""

import json
import subprocess
import sys

import pytest

from cli_runs import ROOT, TIMEOUT_S, cli_env, run, tiny_args


@pytest.mark.slow
@pytest.mark.parametrize("config", ["synthetic_iou_cpu", "synthetic_atss_cpu",
                                    "synthetic_p2_cpu"])
def test_variant_trains_and_evaluates(tmp_path, config):
  workdir = tmp_path / config
  proc = run("train.py", workdir, tiny_args(tmp_path, steps=2, **{
      "model.inference.score_thresh": 0.0}), config=f"configs/{config}.py")
  metrics = json.loads((workdir / "eval" / "metrics_step2.json").read_text())
  assert 0 <= metrics["AP"] <= 1, proc.stdout[-2000:]


@pytest.mark.slow
def test_bpr_of_p2_and_atss(tmp_path):
  """BPR on the tiny synthetic val split: P2-P7 rows for the P2 config, an
  ATSS row for the ATSS config."""
  for config, row in (("synthetic_p2_cpu", "FCOS, FPN P2-P7 with size ranges"),
                      ("synthetic_atss_cpu",
                       "ATSS (the config's rule), FPN P3-P7")):
    out = tmp_path / config
    proc = subprocess.run(
        [sys.executable, str(ROOT / "analyze.py"), "bpr",
         f"--config={ROOT / 'configs' / (config + '.py')}", f"--out={out}"]
        + tiny_args(tmp_path), cwd=ROOT, env=cli_env(), capture_output=True,
        text=True, timeout=TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    stats = json.loads((out / "bpr_val.json").read_text())["settings"]
    assert row in stats and row in proc.stdout
    assert 0 < stats[row]["bpr"] <= 1 and stats[row]["recalled"] > 0
