"""Aggregation, the two paper ratios, and merging result folders, on hand-made records."""

from __future__ import annotations

import json
import os

import pytest

from deltamem.eval.report import aggregate, collect, markdown, ratios, write_reports


def rec(label, window, cat, score, conv="c1", item=None, suite="locomo", **kw):
    item = item or f"{label}-{window}-{cat}-{score}-{conv}"
    return {"key": f"{suite}|{label}|{window}|{item}", "suite": suite, "label": label, "window": window,
            "conversation": conv, "item": item, "category": cat, "score": score, "latency_s": 0.5, **kw}


RECORDS = [
    rec("window", 1024, 1, 0.2), rec("window", 1024, 5, 1.0),
    rec("rag-bm25", 1024, 1, 0.4), rec("rag-bm25", 1024, 5, 0.0),
    rec("none", None, 1, 0.1), rec("none", None, 5, 1.0),
    rec("full", None, 1, None, skipped="does not fit"),
    rec("delta-mem:window+memory", 1024, 1, 0.3), rec("delta-mem:window+memory", 1024, 5, 0.0),
    rec("delta-mem:memory-only", None, 1, 0.6), rec("delta-mem:memory-only", None, 5, 0.0),
    rec("rag-dense", 1024, 1, 0.9),  # unfinished (1 item of 2): left out of the comparisons
    rec("window", 2048, 1, 0.5), rec("delta-mem:window+memory", 2048, 1, 0.25),
    rec("window", 2048, 4, 0.5), rec("delta-mem:window+memory", 2048, 4, 0.25),
]


def test_locomo_headline_is_categories_1_to_4_and_skips_are_counted():
    agg = aggregate(RECORDS)["locomo"]
    rows = {(r["label"], r["window"]): r for r in agg["rows"]}
    w = rows[("window", 1024)]
    assert w["overall_1_4"] == pytest.approx(0.2) and w["overall_1_5"] == pytest.approx(0.6)
    assert w["headline"] == w["overall_1_4"] and w["categories"]["5"] == {"score": 1.0, "n": 1}
    full = rows[("full", None)]
    assert full["n"] == 0 and full["skipped"] == 1 and full["notes"] == ["does not fit"]


def test_ratios_against_the_window_baseline_and_the_best_non_delta_mem_method():
    rats = {(q["window"], q["delta_mem"]): q for q in ratios(aggregate(RECORDS))}
    q = rats[(1024, "delta-mem:window+memory")]
    assert q["delta_mem/window"] == pytest.approx(0.3 / 0.2)
    assert q["best_label"] == "rag-bm25" and q["delta_mem/best"] == pytest.approx(0.3 / 0.4)  # δ-mem never "best"
    m = rats[(1024, "delta-mem:memory-only")]  # window-free rows join every window's comparison
    assert m["delta_mem/window"] == pytest.approx(0.6 / 0.2) and m["delta_mem/best"] == pytest.approx(0.6 / 0.4)
    q2 = rats[(2048, "delta-mem:window+memory")]
    assert q2["best_label"] == "window" and q2["delta_mem/window"] == pytest.approx(0.5)
    assert rats[(2048, "delta-mem:memory-only")]["best_label"] == "window"


def test_perplexity_ratio_and_markdown():
    recs = [rec("none", None, "qa", 1.0, suite="general"),
            {"key": "p0", "suite": "general", "label": "none", "metric": "perplexity", "perplexity": 10.0},
            {"key": "p1", "suite": "general", "label": "delta-mem:memory-only", "metric": "perplexity",
             "perplexity": 12.5}]
    agg = aggregate(recs)
    rats = ratios(agg)
    assert rats == [{"suite": "general", "perplexity": "delta-mem:memory-only", "ratio_to_backbone": 1.25}]
    text = markdown(agg, rats)
    assert "perplexity (delta-mem:memory-only): 12.50" in text and "1.250" in text


def test_merging_folders_keeps_one_record_per_key(tmp_path):
    a, b = tmp_path / "a" / "locomo", tmp_path / "b"
    os.makedirs(a)
    os.makedirs(b)
    (a / "results.jsonl").write_text("\n".join(json.dumps(r) for r in RECORDS[:6]) + "\n")
    newer = dict(RECORDS[0], score=0.9)
    (b / "results.jsonl").write_text("\n".join(json.dumps(r) for r in [newer] + RECORDS[6:]) + "\n{torn")
    merged = collect([str(tmp_path / "a"), str(b)])
    assert len(merged) == len(RECORDS)
    assert all(r["n"] <= 2 for r in aggregate(merged)["locomo"]["rows"])
    assert next(r for r in merged if r["key"] == newer["key"])["score"] == 0.9
    summary = write_reports([str(tmp_path / "a"), str(b)], str(tmp_path / "out"))
    assert {os.path.basename(p) for p in summary["plots"]} == {"locomo_categories_w1024.png",
                                                               "locomo_categories_w2048.png", "locomo_window.png"}
    assert "| locomo | 1024 | delta-mem:window+memory |" in (tmp_path / "out" / "table.md").read_text()
    with pytest.raises(FileNotFoundError, match="no results folder"):
        collect([str(tmp_path / "missing")])
