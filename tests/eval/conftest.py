"""Eval test fixtures: the runtime tests' tiny random llama models and SmolLM2 tokenizer (reused, not copied),
small benchmark-shaped data files, and a bag-of-words stand-in for the MiniLM encoder."""

from __future__ import annotations

import importlib.util
import json
import re
import zlib
from pathlib import Path

import numpy as np
import pytest

_spec = importlib.util.spec_from_file_location("runtime_fixtures", Path(__file__).parents[1] / "runtime" / "conftest.py")
runtime_fixtures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(runtime_fixtures)
embedded, tokenizer, tiny, make_tiny, lm_head_hook = (runtime_fixtures.embedded, runtime_fixtures.tokenizer,
                                                      runtime_fixtures.tiny, runtime_fixtures.make_tiny,
                                                      runtime_fixtures.lm_head_hook)
build_tiny = runtime_fixtures.build_tiny


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


@pytest.fixture
def data_files(tmp_path):
    """`{suite: path}` of small data files for every suite with a file."""
    from deltamem.eval.mab import write_synthetic

    lc, cr = tmp_path / "locomo.json", tmp_path / "cr.json"
    lc.write_text(json.dumps(LOCOMO))
    cr.write_text(json.dumps(mab_rows()))
    synth = write_synthetic(tmp_path / "synth.json", seed=3, per_task=1, lines=6)
    return {"locomo": str(lc), "mab-cr": str(cr), "mab-synth": synth, "general": None}


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory, tokenizer):
    """A folder holding a tiny random llama (no adapter) and the SmolLM2 tokenizer, for `--backbone`."""
    from deltamem.adapter import detach_delta_mem

    d = tmp_path_factory.mktemp("tiny-backbone")
    model = detach_delta_mem(build_tiny(tokenizer, seed=5))
    model.save_pretrained(d)
    tokenizer.save_pretrained(d)
    return str(d)
