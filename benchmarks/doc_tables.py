"""The result tables of README.md and BENCHMARKS.md, generated from results/.

Each table between `<!-- table: NAME -->` and `<!-- end table -->` in the
docs is rendered from the JSON files in results/, which hold what a named
command wrote (an evaluation's `metrics_stepN.json`, analyze.py's
`recall_*.json`, ...), copied there with `record`. A test checks that the
docs equal what this renders, so a number in those tables cannot go stale
without the test failing.

  python -m benchmarks.doc_tables                 # rewrite the tables
  python -m benchmarks.doc_tables --check         # exit 1 if a doc differs
  python -m benchmarks.doc_tables record family.gfl.metrics \
      /tmp/gfl/eval/metrics_step1500.json         # copy a command's JSON in
"""

from __future__ import annotations

import argparse
import json
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
RESULTS = ROOT / "results"
DOCS = ("README.md", "BENCHMARKS.md")
_BLOCK = re.compile(r"(<!-- table: (\S+) -->\n)(.*?)(<!-- end table -->)",
                    re.DOTALL)


def load(name: str) -> dict:
  return json.loads((RESULTS / f"{name}.json").read_text())


def _f(x) -> str:
  return f"{x:.3f}"


def _rows(header, rows) -> str:
  lines = ["| " + " | ".join(header) + " |",
           "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(r) + " |" for r in rows]
  return "\n".join(lines) + "\n"


COCO = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def main_command() -> str:
  r = load("main_command")
  return _rows(list(COCO) + ["measured"],
               [[_f(r["metrics"][k]) for k in COCO] + [r["measured"]]])


def _family_rows() -> dict:
  """results/family.json's rows, each with its train-step and memory
  ratios to FCOS from the recorded benchmark (`bench`: the JSON of
  `python -m benchmarks --sections family --json`), by preset name."""
  fam = load("family")
  bench = {r["preset"]: r for r in
           fam.get("bench", {}).get("sections", {}).get("family", {}).get(
               "rows", [])}
  rows = {}
  for key, row in fam["rows"].items():
    row = dict(row)
    if key in bench:
      row["step_vs_fcos"] = bench[key]["time_ratio"]
      row["memory_vs_fcos"] = bench[key]["memory_ratio"]
    rows[key] = row
  return rows


def family_readme() -> str:
  rows = []
  for row in _family_rows().values():
    if "metrics" not in row or "step_vs_fcos" not in row:
      continue  # The front door: the presets, each measured in full.
    m = row["metrics"]
    rows.append([row["label"]] + [_f(m[k]) for k in COCO[:4]] + [
        _f(row["tta_metrics"]["AP"]) if "tta_metrics" in row else "",
        f"{row['step_vs_fcos']:.2f}x", f"{row['memory_vs_fcos']:.2f}x"])
  return _rows(["preset (`configs/synthetic_*_cpu.py`)", "AP", "AP50",
                "AP75", "APs", "AP TTA", "step", "memory"], rows)


def family() -> str:
  rows = []
  for row in _family_rows().values():
    m = row.get("metrics")
    cells = ([_f(m[k]) for k in COCO] if m else
             [row.get("note", "")] + [""] * (len(COCO) - 1))
    tta = _f(row["tta_metrics"]["AP"]) if "tta_metrics" in row else ""
    ratios = [f"{row[k]:.2f}" if k in row else ""
              for k in ("step_vs_fcos", "memory_vs_fcos")]
    rows.append([row["label"]] + cells + [tta] + ratios)
  return _rows(["preset", "AP", "AP50", "AP75", "APs", "APm", "APl",
                "AP with TTA", "train step / FCOS", "memory / FCOS"], rows)


def family_tta() -> str:
  rows = [[row["label"]] + [_f(row["tta_metrics"][k]) for k in COCO]
          for row in _family_rows().values() if "tta_metrics" in row]
  return _rows(["preset, `--tta=cheap`"] + list(COCO), rows)


def rpn() -> str:
  keys = ("AR100", "AR300", "AR1000", "ARs1000", "ARm1000", "ARl1000")
  rows = [[row["label"], f"{row['metrics']['proposals_per_image']:.0f}"] +
          [_f(row["metrics"][k]) for k in keys]
          for row in load("rpn")["rows"].values()]
  return _rows(["proposals", "per image (mean)", "AR@100", "AR@300",
                "AR@1000", "ARs@1000", "ARm@1000", "ARl@1000"], rows)


def _pct(x) -> str:
  return f"{100 * x:.2f}%"


def assignment() -> str:
  a = load("analyses")
  amb = a["ambiguity_train"]["settings"]
  rows = []
  for name, bpr in a["bpr_train"]["settings"].items():
    cells = ([_pct(amb[name]["ambiguous_share"]),
              _pct(amb[name]["ambiguous_classes_share"])] if name in amb
             else ["", ""])
    rows.append([name, _pct(bpr["bpr"])] + cells +
                [_pct(a["bpr_val"]["settings"][name]["bpr"])])
  return _rows(["assignment", "BPR (train)", "ambiguous positives (train)",
                "of different classes (train)", "BPR (val)"], rows)


def detections() -> str:
  d = load("analyses")["ambiguity_val"]["detections"]
  return _rows(["final detections (val, all scores)",
                "from ambiguous locations", "of different classes"],
               [[f"{d['detections']:,}", _pct(d["ambiguous_share"]),
                 _pct(d["ambiguous_classes_share"])]])


def serving() -> str:
  r = load("serving")
  e = r["bench"]["sections"]["serving"]
  names = {"onnxruntime": "our ONNX export in ONNX Runtime",
           "jitted": "our jitted model (`Detector`, `fcos-predict`)",
           "torchvision": "torchvision's FCOS (`fcos_resnet50_fpn`)"}
  rows = [[names[k], f"{1e3 * e['s'][k]['median']:.0f}",
           f"{1e3 * e['s'][k]['min']:.0f}-{1e3 * e['s'][k]['max']:.0f}",
           f"{e['torchvision_over'][k]:.2f}x"]
          for k in ("onnxruntime", "jitted", "torchvision")]
  return _rows(["R-50 FCOS, 800x1344, batch 1, NMS included", "ms (median)",
                "ms (min-max)", "speed vs torchvision"], rows)


# Short names of the presets in sentences and the train-step table.
_SHORT = {"official": "FCOS imprv", "iou": "IoU quality", "atss": "ATSS",
          "gfl": "GFL", "p2": "FCOS + P2", "vfnet": "VFNet",
          "tood": "TOOD, TAL"}


def family_summary() -> str:
  """The README's sentences under its family table: which presets beat
  FCOS and by how much, what TTA adds, what their train steps cost."""
  rows = {k: r for k, r in _family_rows().items()
          if "metrics" in r and "step_vs_fcos" in r}
  base = rows.pop("official")["metrics"]["AP"]
  gain = {k: r["metrics"]["AP"] - base for k, r in rows.items()}
  name = lambda k: _SHORT[k].split(",")[0]
  better = sorted((k for k in gain if gain[k] > 0), key=lambda k: -gain[k])
  worse = [k for k in gain if gain[k] <= 0]
  tta = [r["tta_metrics"]["AP"] - r["metrics"]["AP"]
         for r in _family_rows().values()
         if "tta_metrics" in r and "step_vs_fcos" in r]
  said = [f"{name(k)} (+{gain[k]:.3f} AP)" if i == 0 else
          f"{name(k)} (+{gain[k]:.3f})" for i, k in enumerate(better)]
  text = "On this small data " + _and(said) + " beat FCOS"
  if worse:
    text += ", " + _and([name(k) for k in worse]) + " alone do not"
  text += (f"; TTA adds {min(tta):.2f}-{max(tta):.2f} AP to each. ")
  costs = [f"{name(k)} {rows[k]['step_vs_fcos']:.2f}x and "
           f"{rows[k]['memory_vs_fcos']:.2f}x" for k in better]
  return (text + "Their train steps cost, against FCOS's on the CPU (time "
          "and memory): " + ", ".join(costs) + ".\n")


def _and(items) -> str:
  return items[0] if len(items) == 1 else (
      ", ".join(items[:-1]) + " and " + items[-1])


def family_step() -> str:
  """BENCHMARKS' train-step table of the family, from the recorded
  benchmark (results/family.json `bench`)."""
  bench = load("family")["bench"]["sections"]["family"]["rows"]
  mib = lambda b: f"{b / 2**20:.1f}"
  rows = []
  for r in bench:
    s, mem = r["s"], r["xla_memory"]
    rows.append([
        f"`{r['preset']}` ({_SHORT[r['preset']]})", f"{r['params']:,}",
        f"{1e3 * s['median']:.1f} ({1e3 * s['min']:.1f}-{1e3 * s['max']:.1f})",
        f"{r['time_ratio']:.2f}", f"{r['batch'] / s['median']:.1f}",
        mib(mem["peak"]), f"{r['memory_ratio']:.2f}", mib(mem["temp"]),
        f"{r['xla_flops'] / 1e9:.1f}"])
  return _rows(["preset", "params", "ms/step, median (min-max)",
                "time / FCOS", "img/s", "XLA memory, MiB", "memory / FCOS",
                "of it temporaries, MiB", "XLA GFLOP/step"], rows)


def serving_summary() -> str:
  """The README's sentence on CPU inference, from results/serving.json."""
  over = load("serving")["bench"]["sections"]["serving"]["torchvision_over"]
  return (f"In a serving run (R-50 800x1344, batch 1, NMS included) our "
          f"jitted model ran {over['jitted']:.2f}x torchvision's FCOS and "
          f"our ONNX export in ONNX Runtime {over['onnxruntime']:.2f}x: for "
          "CPU inference, serve the ONNX export with ONNX Runtime "
          "([CPU serving](BENCHMARKS.md#cpu-serving-of-r-50-2026-12-07)).\n")


TABLES = {"main_command": main_command, "family_readme": family_readme,
          "family": family, "family_tta": family_tta, "rpn": rpn,
          "assignment": assignment, "detections": detections,
          "serving": serving, "family_summary": family_summary,
          "family_step": family_step, "serving_summary": serving_summary}


def render(text: str, doc: str) -> str:
  def one(match):
    name = match.group(2)
    if name not in TABLES:
      raise SystemExit(f"{doc}: unknown table {name!r}; known: "
                       f"{', '.join(TABLES)}")
    return match.group(1) + TABLES[name]() + match.group(4)
  return _BLOCK.sub(one, text)


def stale_docs() -> list[str]:
  """The docs whose tables differ from what results/ renders."""
  return [doc for doc in DOCS
          if render((ROOT / doc).read_text(), doc) != (ROOT / doc).read_text()]


def record(key: str, source: str) -> None:
  """results/FILE.json[k1][k2]... = the JSON in `source` (key FILE.k1.k2)."""
  name, *path = key.split(".")
  target = RESULTS / f"{name}.json"
  data = json.loads(target.read_text()) if target.exists() else {}
  node = data
  for k in path[:-1]:
    node = node.setdefault(k, {})
  node[path[-1]] = json.loads(pathlib.Path(source).read_text())
  target.write_text(json.dumps(data, indent=1) + "\n")
  print(f"{target.relative_to(ROOT)}: {key} <- {source}")


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--check", action="store_true",
                      help="exit 1 if a doc's tables differ from results/")
  sub = parser.add_subparsers(dest="command")
  rec = sub.add_parser("record", help="copy a command's JSON into results/")
  rec.add_argument("key", help="FILE.KEY.KEY... (e.g. family.gfl.metrics)")
  rec.add_argument("source", help="the JSON file the command wrote")
  args = parser.parse_args(argv)
  if args.command == "record":
    record(args.key, args.source)
    return 0
  stale = stale_docs()
  if args.check:
    for doc in stale:
      print(f"{doc}: its tables differ from results/; run python -m "
            "benchmarks.doc_tables", file=sys.stderr)
    return 1 if stale else 0
  for doc in stale:
    path = ROOT / doc
    path.write_text(render(path.read_text(), doc))
    print(f"rewrote the tables of {doc}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
