"""The synthetic MemoryAgentBench generators: deterministic for a seed, answerable from their context, and
scored by the MemoryAgentBench rules."""

from __future__ import annotations

import json

from deltamem.eval.mab import (MEMORIZE, TASKS, chunk_messages, generate_synthetic, load_synthetic, normalize,
                               substring_score, write_synthetic)


def test_same_seed_same_suite_other_seed_other_suite():
    a, b = generate_synthetic(seed=1), generate_synthetic(seed=1)
    assert json.dumps(a) == json.dumps(b)
    assert json.dumps(generate_synthetic(seed=2)) != json.dumps(a)


def test_every_task_is_present_and_answerable_from_its_context():
    data = generate_synthetic(seed=0, per_task=2, lines=20)
    cats = {c["category"] for c in data["conversations"]}
    assert cats == {f"{comp}/{t}" for t, (comp, _) in TASKS.items()}
    for c in data["conversations"]:
        assert c["questions"]
        for q in c["questions"]:
            for a in q["answers"]:
                assert a in c["context"], (c["id"], a)  # every gold answer is stated in the history
            if q["match"] == "all":
                assert len(q["answers"]) >= 2


def test_variable_chain_is_in_order_and_spread_facts_cover_the_history():
    data = generate_synthetic(seed=5, per_task=1, lines=40)
    vt = next(c for c in data["conversations"] if c["id"].startswith("variable-tracking"))
    chain = vt["questions"][0]["answers"]
    pos = [vt["context"].index(f"VAR {v} =") for v in chain]
    assert pos == sorted(pos)
    sf = next(c for c in data["conversations"] if c["id"].startswith("spread-facts"))
    lines = sf["context"].splitlines()
    at = [i for i, line in enumerate(lines) if "trip to" in line]
    assert at[0] < len(lines) // 3 and at[-1] > 2 * len(lines) // 3  # the facts span the whole history


def test_write_then_load_round_trip(tmp_path):
    path = write_synthetic(tmp_path / "s.json", seed=4, per_task=1, lines=10)
    convs = load_synthetic(path)
    assert len(convs) == len(TASKS)
    assert all(m["content"].startswith(MEMORIZE) for c in convs for m in c.history)
    assert load_synthetic(path)[0].items == convs[0].items


def test_substring_rules():
    assert normalize("The  Answer, is: BONN!") == "answer is bonn"
    assert substring_score("I think it is Bonn.", ["bonn"]) == 1.0
    assert substring_score("Ulm", ["Bonn", "Berlin"]) == 0.0
    assert substring_score("1234567 and 7654321", ["1234567", "7654321", "1111111"], "all") == 2 / 3
    assert substring_score("Label: 3", ["3"], "label") == 1.0
    assert substring_score("13", ["3"], "label") == 0.0  # the label is the first number, not a substring
    assert substring_score("", ["x"]) == 0.0


def test_chunks_keep_whole_lines_under_the_size():
    text = "\n".join(f"line {i} " + "x" * 30 for i in range(20))
    msgs = chunk_messages(text, chunk_chars=100)
    body = [m["content"][len(MEMORIZE):] for m in msgs]
    assert "\n".join(body).splitlines() == text.splitlines()
    assert all(len(b) <= 100 for b in body)
