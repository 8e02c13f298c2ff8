"""The engine's continuous batching on the tiny model: a request that arrives while a batch is decoding
joins it at the next step, and every row's tokens (greedy, or sampled with a seed) equal those of the same
request decoded alone, with its own memory state."""

from __future__ import annotations

import threading

import pytest
import torch

from deltamem.adapter import MemoryState
from deltamem.runtime.generate import GenerationConfig
from deltamem.serve import engine as engine_mod
from deltamem.serve.engine import Engine


def memory(model, seed: int) -> MemoryState:
    s = MemoryState.zeros(model)
    g = torch.Generator().manual_seed(seed)
    s.tensors = [0.5 * torch.randn(t.shape, generator=g) for t in s.tensors]
    return s


class Collector:
    """The events of one request; `on_token(n, fn)` runs `fn` (on the engine thread) at its n-th token."""

    def __init__(self):
        self.tokens, self.done, self.error = [], threading.Event(), None
        self.hooks = {}
        self.finish = None

    def emit(self, kind, value):
        if kind == "text":
            self.tokens.append(value)
            if fn := self.hooks.pop(len(self.tokens), None):
                fn()
        elif kind == "done":
            self.finish = value
            self.done.set()
        else:
            self.error = value
            self.done.set()


def run_alone(tiny, prompt, state, cfg):
    eng = Engine(*tiny, max_batch=1)
    c = Collector()
    eng.generate(prompt, state, cfg, c.emit)
    assert c.done.wait(120) and c.error is None, c.error
    eng.close()
    return c.tokens, c.finish


@pytest.mark.parametrize("mergeable", [True, False], ids=["joins-mid-decode", "waits-when-caches-cannot-merge"])
def test_a_request_arriving_mid_decode_joins_the_running_batch(tiny, monkeypatch, mergeable):
    model, tok = tiny
    if not mergeable:
        monkeypatch.setattr(engine_mod, "mergeable", lambda cache: False)
    long_cfg = GenerationConfig(max_new_tokens=24)
    greedy = GenerationConfig(max_new_tokens=6)
    sampled = GenerationConfig(max_new_tokens=6, do_sample=True, temperature=0.9, top_p=0.95, seed=7)
    a_prompt = tok.encode("The first request has a fairly long prompt about lockers and colours.")
    b_prompt, c_prompt = tok.encode("Second, short."), tok.encode("Third one, sampled with a seed!")
    states = [memory(model, s) for s in (1, 2, 3)]

    eng = Engine(model, tok, max_batch=8, batch_wait_s=0)
    a, b, c = Collector(), Collector(), Collector()
    steps_before = []

    def arrive():  # on the engine thread, between two decode steps of request a
        steps_before.append(len(eng.batches))
        eng.generate(b_prompt, states[1], greedy, b.emit)
        eng.generate(c_prompt, states[2], sampled, c.emit)

    a.hooks[3] = arrive
    eng.generate(a_prompt, states[0], long_cfg, a.emit)
    for x in (a, b, c):
        assert x.done.wait(120) and x.error is None, x.error
    eng.close()
    alone = [run_alone(tiny, p, s, cfg) for p, s, cfg in ((a_prompt, states[0], long_cfg),
                                                         (b_prompt, states[1], greedy), (c_prompt, states[2], sampled))]
    assert [(x.tokens, x.finish) for x in (a, b, c)] == alone
    together = [n for n in eng.batches if n == 3]
    if mergeable:  # b and c decoded alongside a from the step after they arrived
        n = steps_before[0]  # the step running when they arrived still had a alone; the next had all three
        assert eng.batches[n:n + 2] == [1, 3] and len(together) >= 5
    else:
        assert not together and max(eng.batches) == 2  # they waited for a, then ran together


def test_rows_leave_and_the_batch_goes_on(tiny):
    """Rows with different lengths stop at different steps; the others keep decoding to their own end."""
    model, tok = tiny
    eng = Engine(model, tok, max_batch=4, batch_wait_s=0.5)
    prompts = [tok.encode(f"Request {i}: " + "word " * (3 * i)) for i in range(4)]
    cfgs = [GenerationConfig(max_new_tokens=n) for n in (2, 9, 4, 12)]
    states = [memory(model, 10 + i) for i in range(4)]
    got = [Collector() for _ in range(4)]
    for p, s, cfg, c in zip(prompts, states, cfgs, got):
        eng.generate(p, s, cfg, c.emit)
    for c in got:
        assert c.done.wait(120) and c.error is None
    eng.close()
    assert eng.batches[0] == 4 and eng.batches[-1] == 1
    assert [(c.tokens, c.finish) for c in got] == [run_alone(tiny, p, s, cfg)
                                                    for p, s, cfg in zip(prompts, states, cfgs)]
