"""Episodes -> tensors: answer-fit drops, history truncation to the last messages, read labels, answer CE."""

from __future__ import annotations

import pytest
import torch

from deltamem.runtime.render import Renderer
from deltamem.runtime.session import DEFAULT_SYSTEM_PROMPT
from deltamem.train import Trainer
from deltamem.train.episode import answer_ce, collate_reads, encode_episode
from deltamem.train.sources import Episode

from train_helpers import EOS


@pytest.fixture(scope="module")
def renderer(tokenizer):
    return Renderer(tokenizer, DEFAULT_SYSTEM_PROMPT)


def _history(n: int) -> list[dict]:
    out = []
    for i in range(n):
        out += [{"role": "user", "name": "Maya", "content": f"Message number {i}: I went to the market for item {i}."},
                {"role": "assistant", "content": f"Reply {i}, noted."}]
    return out


def _ep(n=3, answer="Biscuit", question="What is the name of Maya's pet?") -> Episode:
    return Episode(_history(n), question, answer)


def test_read_ids_hold_prompt_then_answer_and_end(renderer):
    ep = _ep()
    enc = encode_episode(renderer, ep, "token", 256, 96, EOS)
    prompt = renderer.prompt([], ep.question)
    ans = renderer.encode(ep.answer)
    assert enc.read_ids == prompt + ans + [EOS]
    assert enc.answer_start == len(prompt)
    # the read window holds no history unless asked; the "window" control holds all of it
    full = renderer.prompt(ep.history, ep.question)
    assert enc.window_read_ids == full + ans + [EOS] and enc.window_answer_start == len(full)
    # the write pass writes exactly the rendered history after the read-only system prompt
    new = sum((renderer.encode(renderer.message(m)) for m in ep.history), [])
    ids, wm = enc.write.input_ids[0].tolist(), enc.write.write_mask[0].tolist()
    assert ids == list(renderer.system_ids) + new
    assert wm == [False] * len(renderer.system_ids) + [True] * len(new)


def test_answer_space_reads_the_tokens_the_history_wrote(renderer):
    """With `answer_space` the answer is the value's in-sentence tokens, exactly as the write pass holds them."""
    ep = Episode([{"role": "user", "name": "Maya", "content": "I work as a pharmacist these days."}],
                 "What is Maya's job?", "pharmacist")
    plain = encode_episode(renderer, ep, "token", 256, 96, EOS)
    spaced = encode_episode(renderer, ep, "token", 256, 96, EOS, answer_space=True)
    value = renderer.encode(" pharmacist")
    assert spaced.read_ids[spaced.answer_start:] == value + [EOS]
    assert plain.read_ids[plain.answer_start:] == renderer.encode("pharmacist") + [EOS]
    written = spaced.write.input_ids[0][spaced.value].tolist()  # the history's value tokens
    assert written == value
    assert spaced.read_ids[:spaced.answer_start] == plain.read_ids[:plain.answer_start]


def test_recent_messages_enter_the_read_window(renderer):
    ep = _ep(4)
    enc = encode_episode(renderer, ep, "token", 256, 200, EOS, recent_messages=2)
    prompt = renderer.prompt(ep.history[-2:], ep.question)
    assert enc.read_ids[: enc.answer_start] == prompt


def test_answer_that_cannot_fit_is_dropped(renderer):
    ep = _ep()
    prompt_len = len(renderer.prompt([], ep.question))
    ans_len = len(renderer.encode(ep.answer)) + 1
    assert encode_episode(renderer, ep, "token", 256, prompt_len + ans_len, EOS) is not None
    assert encode_episode(renderer, ep, "token", 256, prompt_len + ans_len - 1, EOS) is None
    long = _ep(answer=" ".join(["very long answer"] * 40))
    assert encode_episode(renderer, long, "token", 256, 96, EOS) is None


def test_long_history_keeps_the_last_messages_in_one_pass(renderer):
    ep = _ep(30)
    limit = 120
    toks = [renderer.encode(renderer.message(m)) for m in ep.history]
    assert sum(map(len, toks)) > 3 * limit
    enc = encode_episode(renderer, ep, "token", limit, 96, EOS)
    new = enc.write.input_ids[0][enc.write.write_mask[0]].tolist()
    # the written tokens are the longest suffix of whole messages that fits `limit`
    k = max(j for j in range(1, len(toks) + 1) if sum(map(len, toks[-j:])) <= limit)
    assert new == sum(toks[-k:], [])
    assert len(new) <= limit < len(new) + len(toks[-k - 1])
    assert "item 29" in renderer.tokenizer.decode(new) and "item 0." not in renderer.tokenizer.decode(new)
    assert enc.write.input_ids.shape[1] == len(renderer.system_ids) + len(new)


def test_collate_reads_labels_cover_answer_and_end_only(renderer):
    eps = [_ep(1, "Biscuit"), _ep(2, "a much longer answer about the dog", "Tell me about the pet?")]
    encs = [encode_episode(renderer, ep, "token", 256, 96, EOS) for ep in eps]
    batch = collate_reads([(e.read_ids, e.answer_start) for e in encs], pad_id=EOS)
    T = max(len(e.read_ids) for e in encs)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape == (2, T)
    for i, (e, ep) in enumerate(zip(encs, eps)):
        n = len(e.read_ids)
        assert batch["input_ids"][i, :n].tolist() == e.read_ids
        assert batch["attention_mask"][i].tolist() == [1] * n + [0] * (T - n)
        lab = batch["labels"][i].tolist()
        on = [j for j, t in enumerate(lab) if t != -100]
        assert on == list(range(e.answer_start, n))
        assert [lab[j] for j in on] == renderer.encode(ep.answer) + [EOS]
        assert (batch["input_ids"][i, n:] == EOS).all()


def test_answer_ce_matches_a_plain_forward(make_cfg, renderer):
    tr = Trainer(make_cfg(), progress=False)
    encs = [encode_episode(renderer, ep, "token", 256, 96, EOS)
            for ep in (_ep(1, "Biscuit"), _ep(2, "a much longer answer about the dog"))]
    batch = collate_reads([(e.read_ids, e.answer_start) for e in encs], pad_id=EOS)
    with torch.no_grad():
        got = answer_ce(tr.model, batch)  # no memory
        logits = tr.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    for i in range(2):
        lab = batch["labels"][i, 1:]
        sel = lab != -100
        want = torch.nn.functional.cross_entropy(logits[i, :-1][sel], lab[sel])
        torch.testing.assert_close(got[i], want, rtol=1e-5, atol=1e-5)


def test_trainer_counts_dropped_episodes(make_cfg):
    tr = Trainer(make_cfg(max_read_tokens=64), progress=False)
    eps = [_ep(1), _ep(1, answer=" ".join(["far too long"] * 30)), _ep(2)]
    enc = tr.encode(eps)
    assert len(enc) == 2 and tr.dropped == 1
    assert [e.read_ids[e.answer_start:] for e in enc] == [tr.renderer.encode("Biscuit") + [EOS]] * 2
    tr.encode(eps[1:2])
    assert tr.dropped == 2
