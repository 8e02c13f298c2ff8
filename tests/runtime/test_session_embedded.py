"""MemorySession on the real embedded SmolLM2-135M backbone with an untrained adapter."""

from __future__ import annotations

import os

import pytest
import torch

from deltamem.adapter import DeltaMemConfig, attach_delta_mem
from deltamem.runtime.demo import CONVERSATION
from deltamem.runtime.session import STATE_FILE, MemorySession

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def smollm(embedded):
    model, tok = embedded
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        attach_delta_mem(model, DeltaMemConfig())
    return model, tok


@pytest.mark.integration
def test_embedded_round_trip(smollm, tmp_path):
    model, tok = smollm
    sess = MemorySession(model, tok, window_tokens=0)
    n = sess.write(CONVERSATION[:6])
    assert n == sess.tokens_written > 100
    assert sess.state.nbytes == 30 * 8 * 8 * 4  # 30 layers x rank 8 x 8 floats: 7.5 KiB
    assert all(bool(t.any()) for t in sess.state.tensors)
    before = sess.state.to_bytes()
    answer = sess.ask("What is the name of Maya's cat?", max_new_tokens=12)
    assert isinstance(answer, str) and answer
    assert sess.state.to_bytes() == before  # read-only

    sess.save(tmp_path)
    assert os.listdir(tmp_path) == [STATE_FILE]
    assert os.path.getsize(tmp_path / STATE_FILE) < 16 * 1024
    back = MemorySession.load(tmp_path, model, tok)
    assert back.state.to_bytes() == before
    assert back.transcript == sess.transcript == CONVERSATION[:6]
    assert back.ask("What is the name of Maya's cat?", max_new_tokens=12) == answer
    sess.write(CONVERSATION[6:])
    back.write(CONVERSATION[6:])
    assert back.state.to_bytes() == sess.state.to_bytes()
