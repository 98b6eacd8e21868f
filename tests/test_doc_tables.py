"""The docs' result tables equal what results/ renders (the numbers there
are the JSON files the named commands wrote)."""

import json
import shutil

from benchmarks import doc_tables


def test_docs_tables_equal_the_results_json():
  assert doc_tables.stale_docs() == []
  # Every table named in the docs exists and every results file is used.
  text = "".join((doc_tables.ROOT / d).read_text() for d in doc_tables.DOCS)
  for name in doc_tables.TABLES:
    assert f"<!-- table: {name} -->" in text, name


def test_a_changed_result_makes_the_docs_stale(tmp_path, monkeypatch):
  root = tmp_path / "repo"
  shutil.copytree(doc_tables.RESULTS, root / "results")
  for doc in doc_tables.DOCS:
    shutil.copy(doc_tables.ROOT / doc, root / doc)
  monkeypatch.setattr(doc_tables, "ROOT", root)
  monkeypatch.setattr(doc_tables, "RESULTS", root / "results")
  assert doc_tables.stale_docs() == []
  metrics = json.loads((root / "results/main_command.json").read_text())
  metrics["metrics"]["AP"] = 0.123
  source = tmp_path / "metrics_step1500.json"
  source.write_text(json.dumps(metrics["metrics"]))
  doc_tables.record("main_command.metrics", str(source))  # As a user would.
  assert doc_tables.stale_docs() == ["README.md"]
  assert doc_tables.main(["--check"]) == 1
  assert doc_tables.main([]) == 0  # Rewrites README.md's table.
  assert "| 0.123 | 0.749 |" in (root / "README.md").read_text()
  assert doc_tables.main(["--check"]) == 0
