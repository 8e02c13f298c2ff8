"""The LoCoMo scorer against hand-worked cases for every official rule, and the question prompts."""

from __future__ import annotations

import sys

import pytest

from deltamem.eval import locomo
from deltamem.eval.locomo import (category_5_options, f1_score, normalize_answer, postprocess,
                                  question_prompt, score)


def test_normalisation_drops_case_commas_punctuation_and_articles():
    assert normalize_answer("The Cat, and a Dog!") == "cat dog"
    assert normalize_answer("an apple; the end.") == "apple end"
    assert normalize_answer("") == ""


def test_plain_f1_categories_2_3_4():
    assert score("The cat sat", "cat sat", 4) == 1.0  # articles dropped
    assert score("red car", "red bike", 4) == pytest.approx(0.5)  # 1 common of 2 and 2: p = r = 0.5
    assert score("a red car today", "red car", 2) == pytest.approx(2 * (2 / 3) * 1 / (2 / 3 + 1))  # p 2/3, r 1
    assert score("running dogs", "run dog", 4) == 1.0  # Porter stems
    assert score("Paris, France!", "paris france", 2) == 1.0
    assert score("blue", "red", 4) == 0.0


def test_category_3_uses_the_gold_text_before_the_semicolon():
    gold = "Yes; she adopted a kitten and loves it"
    assert score("yes", gold, 3) == 1.0
    assert score("she adopted a kitten", gold, 3) == 0.0  # the rationale is not gold
    assert score("yes", gold, 4) == pytest.approx(2 * 1 * (1 / 6) / (1 + 1 / 6))  # category 4 keeps it all


def test_category_1_splits_on_commas_and_averages_over_gold_parts():
    assert score("hiking, painting", "painting, hiking, swimming", 1) == pytest.approx(2 / 3)
    assert score("painting and hiking", "painting, hiking", 1) == pytest.approx(2 / 3)  # one predicted part, F1 2/3 each
    assert score("swimming", "swimming", 1) == 1.0


def test_integer_answers_are_cast_to_text():
    assert score("2022", 2022, 2) == 1.0
    assert score("In 2022.", 2022, 4) == pytest.approx(2 / 3)


def test_category_5_needs_an_explicit_no_information_phrase():
    assert score("Not mentioned in the conversation", "self-care", 5) == 1.0
    assert score("(a) not mentioned", "x", 5) == 1.0
    assert score("No information available.", "x", 5) == 1.0
    assert score("self-care is important", "self-care is important", 5) == 0.0
    assert score("I don't know", "x", 5) == 0.0


@pytest.mark.parametrize("cat", [1, 2, 3, 4, 5])
def test_an_empty_prediction_scores_zero(cat):
    assert score("", "anything, at all", cat) == 0.0


def test_unknown_category_is_an_error():
    with pytest.raises(ValueError, match="category must be 1-5"):
        score("x", "x", 6)


def test_f1_is_zero_when_either_side_normalises_to_nothing():
    assert f1_score("the", "the") == 0.0 and f1_score("cat", "!!") == 0.0


def test_question_prompts_follow_the_official_templates():
    q2 = question_prompt("When did she move?", 2, "c:q0")
    assert q2.endswith("Question: When did she move? Use DATE of CONVERSATION to answer with an approximate date.")
    assert q2.startswith("Based on the above conversations, write a short answer")
    assert "Use DATE" not in question_prompt("Who?", 4, "c:q1")
    five = [question_prompt("What did X realise?", 5, f"c:q{i}", "self-care") for i in range(12)]
    for p in five:
        assert "What did X realise? (a) " in p and p.endswith("Select the correct answer by writing (a) or (b).")
        assert "No information available" in p and "self-care" in p
    firsts = {p.index("No information") < p.index("self-care") for p in five}
    assert firsts == {True, False}  # the order varies between questions ...
    assert five == [question_prompt("What did X realise?", 5, f"c:q{i}", "self-care") for i in range(12)]  # ... fixed
    opts = category_5_options("c:q0", "self-care")
    assert sorted(opts.values()) == ["No information available", "self-care"]


def test_replies_are_post_processed_like_the_official_script():
    opts = {"a": "self-care", "b": "No information available"}
    assert postprocess("(b) No information", 5, opts) == "No information available"
    assert postprocess("I think (A).", 5, opts) == "self-care"
    assert postprocess("", 5, opts) == "No information available"  # anything but "(a)" picks option b
    assert postprocess("\n  Answer: (a) Paris\nmore text", 4) == "paris"
    assert postprocess("", 4) == ""
    assert score(postprocess("Not sure (a)", 5, {"a": "No information available", "b": "x"}), "x", 5) == 1.0


def test_missing_nltk_names_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "nltk.stem", None)
    locomo._stemmer.cache_clear()
    try:
        with pytest.raises(ImportError, match="pip install nltk"):
            score("a", "a", 4)
    finally:
        locomo._stemmer.cache_clear()
