"""The synthetic suite (held-out chats, containment scoring), answer CE per item, and `evaluate`, the Python
entry training's validation calls with a model held in memory."""

from __future__ import annotations

import math

import pytest

from deltamem.adapter import MemoryState
from deltamem.data.synthetic import FACTS, NAMES
from deltamem.eval import EvalSpec, evaluate, run_eval
from deltamem.eval.items import Conversation
from deltamem.eval.runner import read_results
from deltamem.eval.suites import SUITES, score_item, target_text
from deltamem.eval.synthetic import contains_score, conversations_from_episodes, heldout_conversations

TRAIN_VALUES = {v.lower() for k in FACTS for v in FACTS[k][0]}


def test_heldout_conversations_are_fixed_and_unseen_in_training():
    convs = heldout_conversations()
    assert len(convs) == 48 and convs == heldout_conversations() and convs != heldout_conversations(seed=1)
    assert SUITES["synthetic"].load(None, 0) == convs
    cats = [c.items[0].category for c in convs]
    assert cats.count("recall") == 32 and cats.count("update") == 16
    assert len({c.id for c in convs}) == 48 and convs[0].id == "recall-000" and convs[32].id == "update-000"
    for c in convs:
        (it,) = c.items
        assert it.match == "contains" and it.id == f"{c.id}:q0" and it.answers[0].lower() not in TRAIN_VALUES
        assert it.answers[0] in " ".join(m["content"] for m in c.history)  # the history states the answer
        assert {m["name"] for m in c.history if m["role"] == "user"} <= set(NAMES["heldout"])
        assert target_text(it) == it.answers[0]
    upd = convs[32].items[0]
    assert upd.meta["old"] != upd.answers[0] and upd.meta["old"] in convs[32].history[0]["content"]
    assert [len(x) for x in (heldout_conversations(16), heldout_conversations(1))] == [16, 1]
    with pytest.raises(ValueError, match="positive int"):
        heldout_conversations(0)


@pytest.mark.parametrize("reply, gold, want", [
    ("Mochi", ["Mochi"], 1.0), ("Her cat is called MOCHI.", ["Mochi"], 1.0), ("Mochi's bowl", ["Mochi"], 1.0),
    ("maybe later", ["May"], 0.0), ("in May, I think", ["May"], 1.0), ("a pharmacist", ["pharmacist"], 1.0),
    ("carbon-dioxide", ["carbon dioxide"], 1.0), ("dioxide carbon", ["carbon dioxide"], 0.0),
    ("", ["Mochi"], 0.0), ("anything", [""], 0.0), ("Cusco or Bergen", ["Tromso", "Bergen"], 1.0),
])
def test_containment_scoring(reply, gold, want):
    assert contains_score(reply, gold) == want


def test_score_item_and_spec_for_the_suite():
    it = heldout_conversations(1)[0].items[0]
    assert score_item(f"I think it is {it.answers[0]}!", it) == 1.0 and score_item("no idea", it) == 0.0
    with pytest.raises(ValueError, match="takes no --data"):
        EvalSpec("synthetic", "none", data="x.json")


def test_memory_only_and_mismatched_on_a_tiny_model(tiny, tokenizer, tmp_path):
    convs = heldout_conversations(4, seed=2)
    tiny.train()
    own = evaluate(tiny, tokenizer, "synthetic", convs, "delta-mem", "memory-only", out=str(tmp_path),
                   max_new_tokens=3)
    assert tiny.training  # the caller's mode is restored
    tiny.eval()
    other = evaluate(tiny, tokenizer, "synthetic", convs, "delta-mem", "mismatched", out=str(tmp_path),
                     max_new_tokens=3)
    for res, lab in ((own, "delta-mem:memory-only"), (other, "delta-mem:mismatched")):
        assert res["label"] == lab and res["n"] == 4 and res["skipped"] == 0 and res["window"] is None
        assert 0.0 <= res["score"] <= 1.0 and set(res["categories"]) == {"recall", "update"}
        ces = [r["answer_ce"] for r in res["records"]]
        assert len(ces) == 4 and all(math.isfinite(x) and x > 0 for x in ces)
        assert res["answer_ce"] == pytest.approx(sum(ces) / 4)
    assert [r["answer_ce"] for r in own["records"]] != [r["answer_ce"] for r in other["records"]]
    # the mismatched run read the memories the memory-only run wrote (one per conversation, cached)
    assert len(list((tmp_path / "cache").glob("state-*"))) == 4
    again = evaluate(tiny, tokenizer, "synthetic", convs, "delta-mem", "memory-only", out=str(tmp_path),
                     max_new_tokens=3)  # resumed: nothing new, the same records back
    assert again["records"] == own["records"] and len(read_results(str(tmp_path))) == 8


def test_answer_ce_with_a_zero_memory_equals_the_backbones(tiny, tokenizer, monkeypatch):
    """memory-only with an empty memory shows the same prompt as `none` and reads nothing: same CE, same reply."""
    import deltamem.eval.methods as methods

    monkeypatch.setattr(methods, "written_state", lambda env, prep: MemoryState.zeros(env.model, 1))
    convs = heldout_conversations(3, seed=5)
    bare = evaluate(tiny, tokenizer, "synthetic", convs, "none", None, max_new_tokens=3)
    zero = evaluate(tiny, tokenizer, "synthetic", convs, "delta-mem", "memory-only", max_new_tokens=3)
    assert [r["answer_ce"] for r in zero["records"]] == pytest.approx([r["answer_ce"] for r in bare["records"]],
                                                                       rel=1e-5)
    assert [r["reply"] for r in zero["records"]] == [r["reply"] for r in bare["records"]]
    assert [r["prompt_tokens"] for r in zero["records"]] == [r["prompt_tokens"] for r in bare["records"]]


def test_conversations_given_in_python_and_the_report(tiny, tokenizer, tmp_path):
    from deltamem.data.synthetic import synthetic_chats

    convs = conversations_from_episodes(synthetic_chats(2, seed=9, split="heldout"))
    assert [c.id for c in convs] == ["recall-000", "recall-001"]
    for cond in ("memory-only", "mismatched"):
        summary = run_eval(tiny, tokenizer, EvalSpec("synthetic", "delta-mem", cond, out=str(tmp_path),
                                                     max_new_tokens=3), progress=False, conversations=convs)
    rows = {r["label"]: r for r in summary["suites"]["synthetic"]["rows"]}
    assert rows["delta-mem:memory-only"]["n"] == 2 and rows["delta-mem:memory-only"]["answer_ce"] > 0
    (q,) = [q for q in summary["ratios"] if "answer_ce" in q]
    assert q["ratio"] == pytest.approx(rows["delta-mem:memory-only"]["answer_ce"] /
                                       rows["delta-mem:mismatched"]["answer_ce"])
    table = (tmp_path / "table.md").read_text()
    assert "### synthetic" in table and "answer CE" in table and "delta-mem:memory-only / delta-mem:mismatched" in table
    dup = [convs[0], Conversation(convs[0].id, convs[1].history, convs[1].items)]
    with pytest.raises(ValueError, match="unique"):
        evaluate(tiny, tokenizer, "synthetic", dup)
    with pytest.raises(ValueError, match="list of deltamem.eval.items.Conversation"):
        evaluate(tiny, tokenizer, "synthetic", [{"id": "x"}])
