"""`deltamem bench serve` end to end on the tiny model (figures are not checked, only that they are there;
the Ray Serve replicas part is skipped here: test_cluster.py covers the cluster)."""

from __future__ import annotations

import json

from deltamem import cli


def test_bench_serve_reports_both_modes(tmp_path, capsys, monkeypatch, tiny):
    out = tmp_path / "bench.json"
    monkeypatch.setattr("serve_helpers.tiny_model", lambda: (*tiny, "tiny"))
    assert cli.main(["bench", "serve", "--users", "2", "--turns", "1", "--max-new-tokens", "2", "--replicas", "",
                     "--model-factory", "serve_helpers:tiny_model", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    row = report["users"]["2"]
    for mode in ("continuous", "one-at-a-time"):
        assert row[mode]["requests"] == 2 and row[mode]["req_per_s"] > 0 and row[mode]["p95_ms"] >= row[mode]["p50_ms"]
        assert row[mode]["mean_batch"] >= 1
    assert row["speedup_req_per_s"] > 0 and report["write_100_tokens"]["tokens"] <= 100
    assert report["write_100_tokens"]["forward_ms"] > 0 and "replicas" not in report
    assert "| 2 | continuous / one-at-a-time |" in capsys.readouterr().out
    assert cli.main(["bench", "nothing"]) == 2
    assert cli.main(["bench", "serve", "--replicas", "0"]) == 2
