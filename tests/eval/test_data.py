"""Loading the suites' data: items and prompts, conversation selection, and errors that name the file and field."""

from __future__ import annotations

import copy
import json

import pytest

from deltamem.eval.locomo import load_conversations, training_conversations
from deltamem.eval.mab import load_conflict_resolution, load_synthetic
from deltamem.eval.suites import SUITES, answer_text, score_item, select

from eval_helpers import LOCOMO, mab_rows


def write(tmp_path, obj, name="data.json"):
    p = tmp_path / name
    p.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return str(p)


def test_locomo_items_prompts_and_history(tmp_path):
    convs = load_conversations(write(tmp_path, LOCOMO))
    assert [c.id for c in convs] == ["conv-a", "conv-b"]
    a = convs[0]
    assert [it.category for it in a.items] == [2, 4, 1, 3, 5]
    assert a.items[0].query == "When did Caroline go to the support group?"  # retrievers search the bare question
    assert "Use DATE of CONVERSATION" in a.items[0].question
    assert a.items[4].answers == ["a kitten"] and "Select the correct answer" in a.items[4].question
    assert sorted(a.items[4].meta["options"].values()) == ["No information available", "a kitten"]
    assert convs[1].items[0].answers == ["2022"]  # integer gold cast to text
    assert a.history[0]["timestamp"] == "1:56 pm on 8 May, 2023" and a.history[0]["name"] == "Caroline"
    assert score_item("not mentioned", a.items[4]) == 1.0 and score_item("a kitten", a.items[1]) == 1.0
    no_info = next(k for k, v in a.items[4].meta["options"].items() if v == "No information available")
    assert score_item(answer_text(f"({no_info})", a.items[4]), a.items[4]) == 1.0
    assert answer_text("(x) raw\nsecond line", convs[1].items[0]) == "(x) raw"


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d[1]["qa"][0].pop("category"), r"data.json: sample \[1\] \(conv-b\) qa\[0\] field 'category'"),
    (lambda d: d[0]["qa"][1].pop("answer"), r"sample \[0\] \(conv-a\) qa\[1\] field 'answer' is missing"),
    (lambda d: d[0]["qa"][2].update(question=""), r"qa\[2\] field 'question' must be a non-empty string"),
    (lambda d: d[1].pop("sample_id"), r"data.json: sample \[1\] lacks 'sample_id'"),
    (lambda d: d[0]["conversation"].pop("speaker_a"), r"data.json: sample \[0\] lacks 'conversation.speaker_a'"),
    (lambda d: d[0]["conversation"]["session_1"][0].pop("text"), r"session_1\[0\] needs 'speaker' and 'text'"),
])
def test_locomo_errors_name_the_file_and_first_bad_field(tmp_path, mutate, message):
    data = copy.deepcopy(LOCOMO)
    mutate(data)
    with pytest.raises(ValueError, match=message):
        load_conversations(write(tmp_path, data))


def test_conflict_resolution_groups_rows_by_context(tmp_path):
    convs = load_conflict_resolution(write(tmp_path, mab_rows()))
    assert [c.id for c in convs] == ["factconsolidation_1k", "factconsolidation_2k"]
    one = convs[0]
    assert [it.id for it in one.items] == ["factconsolidation_mh_1k:0", "factconsolidation_sh_1k:0",
                                           "factconsolidation_sh_1k:1"]
    assert [it.category for it in one.items] == ["mh", "sh", "sh"]
    assert all(m["role"] == "user" and m["content"].startswith("Memorize") for m in one.history)
    assert "Fact number 11" in one.history[-1]["content"]
    assert one.items[0].query == "Which city is fact 3 about?" and "serial number" in one.items[0].question
    assert score_item("It is City 3.", one.items[0]) == 1.0 and score_item("city 4", one.items[0]) == 0.0


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d[1].pop("context"), r"cr.json: row \[1\] field 'context'"),
    (lambda d: d[0].update(questions="q"), r"row \[0\] field 'questions' must be a list"),
    (lambda d: d[2].update(answers=[]), r"row \[2\] field 'answers' must be a list as long as 'questions'"),
    (lambda d: d[1]["answers"].__setitem__(1, "7"), r"row \[1\] field 'answers\[1\]'"),
    (lambda d: d[0].pop("metadata"), r"row \[0\] field 'metadata.source'"),
])
def test_conflict_resolution_errors_name_the_file_and_field(tmp_path, mutate, message):
    rows = mab_rows()
    mutate(rows)
    with pytest.raises(ValueError, match=message):
        load_conflict_resolution(write(tmp_path, rows, "cr.json"))


def test_wrong_format_and_invalid_json(tmp_path):
    with pytest.raises(ValueError, match=r"bad.json: not valid JSON"):
        load_conflict_resolution(write(tmp_path, "{nope", "bad.json"))
    with pytest.raises(ValueError, match=r"x.json: field 'format' must be 'deltamem.mab_synth'"):
        load_synthetic(write(tmp_path, mab_rows(), "x.json"))
    with pytest.raises(ValueError, match=r"l.json: expected a list of LoCoMo samples"):
        load_conversations(write(tmp_path, [], "l.json"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        SUITES["locomo"].load(str(tmp_path / "missing.json"))


def test_select_takes_items_round_robin_over_categories_and_checks_ids(tmp_path):
    convs = load_conversations(write(tmp_path, LOCOMO))
    picked = select(convs, ["conv-a"], limit=3)
    assert [c.id for c in picked] == ["conv-a"]
    assert [it.category for it in picked[0].items] == [2, 4, 1]  # one per category, in file order
    assert [len(c.items) for c in select(convs, None, limit=4)] == [4, 2]
    assert select(convs, None, None) == convs
    with pytest.raises(ValueError, match="unknown conversation id.*conv-z.*known: conv-a, conv-b"):
        select(convs, ["conv-z"], None)


def test_training_conversations_come_from_the_recipes(tmp_path):
    (tmp_path / "a.yaml").write_text("locomo_conversations: [conv-26, conv-30]\n")
    (tmp_path / "b.yaml").write_text("steps: 3\n")
    assert training_conversations(tmp_path) == {"conv-26", "conv-30"}
    (tmp_path / "c.yaml").write_text("preserve_conversations: [conv-41]\n")  # plain text read in training
    assert training_conversations(tmp_path) == {"conv-26", "conv-30", "conv-41"}
    assert isinstance(training_conversations(), set)  # the repository's own recipes parse
