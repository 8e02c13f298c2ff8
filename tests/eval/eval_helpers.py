"""Helpers for the eval tests: small benchmark-shaped data and a bag-of-words stand-in for the MiniLM encoder.

(A module of its own, like tests/train/train_helpers.py: every test folder has a `conftest`, so test files
cannot import from theirs by name.)
"""

from __future__ import annotations

import re
import zlib

import numpy as np


def bow_encode(texts, dims: int = 256):
    """A deterministic bag-of-words embedding: each lower-cased word hashed into one of `dims` slots."""
    out = np.zeros((len(texts), dims), dtype=np.float32)
    for i, t in enumerate(texts):
        for w in re.findall(r"[a-z0-9]+", t.lower()):
            out[i, zlib.crc32(w.encode()) % dims] += 1.0
    return out


def locomo_sample(sid: str, a: str, b: str, facts: list[str], qa: list[dict]) -> dict:
    turns = [{"speaker": a if j % 2 == 0 else b, "dia_id": f"D1:{j + 1}", "text": t} for j, t in enumerate(facts)]
    return {"sample_id": sid, "qa": qa,
            "conversation": {"speaker_a": a, "speaker_b": b, "session_1_date_time": "1:56 pm on 8 May, 2023",
                             "session_1": turns[: len(turns) // 2],
                             "session_2_date_time": "9:00 am on 1 July, 2023", "session_2": turns[len(turns) // 2:]}}


LOCOMO = [
    locomo_sample("conv-a", "Caroline", "Melanie",
                  ["I went to a support group yesterday.", "That sounds brave!", "I adopted a kitten named Pixel.",
                   "Pixel is a lovely name.", "I painted a lake last week.", "Show me the painting sometime."],
                  [{"question": "When did Caroline go to the support group?", "answer": "7 May 2023", "category": 2},
                   {"question": "What did Caroline adopt?", "answer": "a kitten", "category": 4},
                   {"question": "What did they do?", "answer": "support group, painting", "category": 1},
                   {"question": "Would Caroline like cats?", "answer": "Yes; she adopted a kitten", "category": 3},
                   {"question": "What did Melanie adopt?", "adversarial_answer": "a kitten", "category": 5}]),
    locomo_sample("conv-b", "Jon", "Gina",
                  ["I opened a dance studio in 2022.", "Congratulations on the studio!", "My dog is called Rex.",
                   "Rex sounds fun."],
                  [{"question": "When did Jon open the studio?", "answer": 2022, "category": 2},
                   {"question": "What is Jon's dog called?", "answer": "Rex", "category": 4}]),
]


def mab_rows() -> list[dict]:
    ctx1 = "Here is a list of facts:\n" + "\n".join(f"{i}. Fact number {i} is about city {i}." for i in range(12))
    ctx2 = "Here is a list of facts:\n0. The capital of Zed is Ulm.\n1. The capital of Zed is Bonn."
    row = lambda ctx, src, qs, ans: {"context": ctx, "questions": qs, "answers": ans, "metadata": {"source": src}}  # noqa: E731
    return [row(ctx1, "factconsolidation_mh_1k", ["Which city is fact 3 about?"], [["city 3"]]),
            row(ctx1, "factconsolidation_sh_1k", ["Which city is fact 5 about?", "Fact 7?"], [["city 5"], ["7"]]),
            row(ctx2, "factconsolidation_sh_2k", ["What is the capital of Zed?"], [["Bonn"]])]
