"""The demo script on a tiny model (its numbers and table; answers are noise on random weights)."""

from __future__ import annotations

import pytest

from deltamem.runtime.demo import CONVERSATION, QUESTIONS, run_demo
from deltamem.runtime.generate import kv_cache_bytes

pytestmark = pytest.mark.usefixtures("one_thread")


def test_demo_runs_and_reports_sizes(tiny, tokenizer, capsys):
    out = run_demo(tiny, tokenizer, "a test adapter", max_new_tokens=3)
    text = capsys.readouterr().out
    assert "a test adapter" in text
    assert len(out["rows"]) == len(QUESTIONS)
    assert [r["question"] for r in out["rows"]] == QUESTIONS
    assert all(isinstance(r[c], str) for r in out["rows"] for c in ("no memory", "memory only", "full transcript"))
    assert out["state_bytes"] == 2 * 8 * 8 * 4  # 2 layers x [1, 8, 8] float32
    assert out["tokens_written"] > 10 * len(CONVERSATION)
    assert out["kv_cache_bytes"] == kv_cache_bytes(tiny, out["tokens_written"])
    assert f"{out['state_bytes']:,} bytes" in text and "no memory" in text
