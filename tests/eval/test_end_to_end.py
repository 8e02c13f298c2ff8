"""A tiny end-to-end run of every suite x method on a tiny random model: it finishes, writes every output
file, resumes without redoing work, and reports the paper ratios."""

from __future__ import annotations

import json
import os

import pytest

from deltamem.eval import EvalSpec, run_eval
from deltamem.eval.runner import read_results

from eval_helpers import bow_encode

RUNS = [("none", None), ("window", None), ("full", None), ("rag-bm25", None), ("rag-dense", None),
        ("summary", None), ("delta-mem", "memory-only"), ("delta-mem", "window+memory"),
        ("delta-mem", "full+memory"), ("delta-mem", "mismatched"), ("delta-mem", "window+mismatched"),
        ("delta-mem", "full+mismatched")]
SUITES = ("locomo", "mab-cr", "mab-synth", "general", "synthetic")
FEW = {"synthetic": ["recall-000", "recall-001", "update-000"]}  # of its 48 generated conversations


def spec(suite, method, condition, data_files, out, **kw):
    return EvalSpec(suite, method, condition, window=kw.pop("window", 96), data=data_files[suite], out=str(out),
                    limit=kw.pop("limit", 3), max_new_tokens=4, batch_size=2, summary_tokens=16,
                    conversations=kw.pop("conversations", FEW.get(suite)), **kw)


@pytest.mark.parametrize("suite", SUITES)
def test_every_method_runs_and_writes_all_outputs(suite, tiny, tokenizer, data_files, tmp_path):
    out = tmp_path / suite
    for method, cond in RUNS:
        if suite == "general" and cond in ("mismatched", "window+mismatched", "full+mismatched"):
            with pytest.raises(ValueError, match="mismatched control does not apply"):
                run_eval(tiny, tokenizer, spec(suite, method, cond, data_files, out), encoder=bow_encode,
                         progress=False)
            continue
        run_eval(tiny, tokenizer, spec(suite, method, cond, data_files, out), encoder=bow_encode, progress=False)
    recs = read_results(str(out))
    answered = [r for r in recs if r.get("metric") != "perplexity"]
    labels = {r["label"] for r in answered}
    assert len(labels) == len(RUNS) - 3 * (suite == "general")
    for r in answered:
        assert r["score"] is not None and 0.0 <= r["score"] <= 1.0, r
        assert isinstance(r["prediction"], str) and r["latency_s"] >= 0 and r["prompt_tokens"] > 0
        no_text = suite == "locomo" and r["category"] == 5  # the right reply is an option letter
        assert (r["answer_ce"] is None) if no_text else (0 < r["answer_ce"] < 30), r
        assert (r["window"] == 96) == (r["label"] in ("window", "rag-bm25", "rag-dense", "summary",
                                                        "delta-mem:window+memory", "delta-mem:window+mismatched"))
    assert len({r["key"] for r in recs}) == len(recs)
    by = {(r["label"], r["conversation"], r["item"]): r for r in answered}
    for (lab, conv, item), r in by.items():  # the control shows the same window, with another memory
        if lab in ("delta-mem:window+mismatched", "delta-mem:full+mismatched"):
            own = by[(lab.replace("mismatched", "memory"), conv, item)]
            assert r["prompt_tokens"] == own["prompt_tokens"] and r["note"].startswith("memory of ")
            assert not r["note"].endswith(conv)
    for f in ("results.jsonl", "summary.json", "table.md", f"{suite}_window.png", f"{suite}_categories_w96.png"):
        assert os.path.getsize(out / f) > 0, f
    summary = json.loads((out / "summary.json").read_text())
    rats = [q for q in summary["ratios"] if q.get("delta_mem") == "delta-mem:window+memory"]
    assert rats and rats[0]["window"] == 96 and rats[0]["best_label"] is not None
    table = (out / "table.md").read_text()
    assert "delta-mem:window+memory" in table and "δ-mem / window" in table
    if suite != "general":  # each condition stands next to its control's answer CE
        pairs = {(q["answer_ce"], q["window"]) for q in summary["ratios"] if "answer_ce" in q}
        assert pairs == {("delta-mem:memory-only / delta-mem:mismatched", None),
                         ("delta-mem:window+memory / delta-mem:window+mismatched", 96),
                         ("delta-mem:full+memory / delta-mem:full+mismatched", None)}
    if suite == "general":
        ppl = summary["suites"]["general"]["perplexity"]
        assert set(ppl) == {"none", "delta-mem:memory-only", "delta-mem:window+memory", "delta-mem:full+memory"}
        assert any(q.get("perplexity") for q in summary["ratios"])
    if suite == "locomo":
        row = next(r for r in summary["suites"]["locomo"]["rows"] if r["label"] == "window")
        assert row["overall_1_4"] is not None and set(row["categories"]) <= {"1", "2", "3", "4", "5"}


@pytest.mark.parametrize("config", [dict(write_granularity="message"), dict(num_state_heads=4)], ids=["SSW", "MSW"])
def test_other_adapter_variants_write_and_answer(config, make_tiny, tokenizer, data_files, tmp_path):
    from deltamem.adapter import DeltaMemConfig

    model = make_tiny(DeltaMemConfig(**config))
    for cond in ("window+memory", "mismatched"):
        run_eval(model, tokenizer, spec("locomo", "delta-mem", cond, data_files, tmp_path, limit=2), progress=False)
    recs = read_results(str(tmp_path))
    assert len(recs) == 8 and all(isinstance(r["prediction"], str) for r in recs)
    states = [f for f in os.listdir(tmp_path / "cache") if f.startswith("state-")]
    assert len(states) == 2  # one written memory per conversation, shared by both conditions
