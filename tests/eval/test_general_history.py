"""The general suite's history: its built-in unrelated chat by default, or a whole LoCoMo conversation when
one is named, with the same QA items either way."""

from __future__ import annotations

import json

import pytest

from deltamem.eval import EvalSpec, run_eval
from deltamem.eval.general import QA, load_general
from deltamem.eval.locomo import load_conversations
from deltamem.eval.runner import read_results


def test_load_general_offers_each_locomo_conversation_as_history(data_files):
    convs = {c.id: c for c in load_general(data_files["locomo"])}
    real = load_conversations(data_files["locomo"])
    assert list(convs) == ["general"] + [c.id for c in real]
    for c in real:
        assert convs[c.id].history == c.history  # written exactly as the locomo suite writes it
        assert [it.query for it in convs[c.id].items] == [q for q, _ in QA]
    assert [c.id for c in load_general(None)] == ["general"]
    assert [c.id for c in load_general(data_files["mab-cr"])] == ["general"]  # not a LoCoMo file


@pytest.mark.parametrize("conversations", [None, "real"])
def test_general_runs_after_the_named_history(conversations, tiny, tokenizer, data_files, tmp_path):
    samples = json.loads(open(data_files["locomo"]).read())
    for s, sid in zip(samples, ("conv-43", "conv-44")):  # the perplexity text's default conversations
        s["sample_id"] = sid
    data = tmp_path / "locomo.json"
    data.write_text(json.dumps(samples))
    real = "conv-44"
    ids = None if conversations is None else [real]
    spec = EvalSpec("general", "delta-mem", "memory-only", window=96, data=str(data), out=str(tmp_path / "out"),
                    limit=2, conversations=ids, max_new_tokens=4, batch_size=2)
    run_eval(tiny, tokenizer, spec, progress=False)
    recs = read_results(str(tmp_path / "out"))
    assert {r["conversation"] for r in recs} == {"general" if ids is None else real}
    assert sum(r.get("metric") != "perplexity" for r in recs) == 2
    with pytest.raises(ValueError, match="unknown conversation id"):
        bad = EvalSpec("general", "none", None, data=str(data), out=str(tmp_path / "x"),
                       conversations=["conv-999"])
        run_eval(tiny, tokenizer, bad, progress=False)
