"""Generation with a bound memory: stopping, streaming, sampling, KV cache and batching."""

from __future__ import annotations

import types

import pytest
import torch

from deltamem.adapter import MemoryState, use_memory
from deltamem.runtime.generate import (GenerationConfig, PrefixCache, generate_tokens, has_memory, kv_cache_bytes,
                                       prefill, stop_ids, stream_text)
from deltamem.runtime.session import MemorySession

pytestmark = pytest.mark.usefixtures("one_thread")

EOS = 2  # SmolLM2 <|im_end|>

FACTS = [{"role": "user", "content": "My sister Ana lives in Porto and plays the violin."},
         {"role": "assistant", "content": "Porto is a lovely city. How long has Ana played?"}]


@pytest.fixture
def sess(tiny, tokenizer):
    s = MemorySession(tiny, tokenizer, window_tokens=0)
    s.write(FACTS)
    return s


def run(sess, question="Where does Ana live?", **cfg):
    return list(generate_tokens(sess.model, [sess.prompt_ids(question)], sess.state, GenerationConfig(**cfg),
                                sess.stop, sess.pad_id))


def test_stop_ids(tiny, tokenizer):
    assert stop_ids(tiny, tokenizer) == {EOS}
    fake = types.SimpleNamespace(generation_config=types.SimpleNamespace(eos_token_id=[7, 9]))
    assert stop_ids(fake, tokenizer) == {7, 9, EOS}
    fake.generation_config.eos_token_id = None
    assert stop_ids(fake, tokenizer) == {EOS}


@pytest.mark.parametrize("n", [0, 1, 3])
def test_generation_stops_at_eos(sess, tokenizer, lm_head_hook, n):
    hook = lm_head_hook(sess.model, eos_after=n, forbid=True)
    steps = run(sess, max_new_tokens=20)
    assert [s[0] is None for s in steps] == [False] * n + [True]
    assert hook.calls == n + 1  # the forward after EOS is not run
    tokens = [s[0] for s in steps[:n]]
    assert EOS not in tokens
    hook.calls = 0
    assert sess.ask("Where does Ana live?", max_new_tokens=20) == tokenizer.decode(tokens,
                                                                                skip_special_tokens=True).strip()
    assert hook.calls == n + 1


@pytest.mark.parametrize("n", [1, 2, 7])
def test_generation_stops_at_max_new_tokens(sess, lm_head_hook, n):
    hook = lm_head_hook(sess.model, forbid=True)
    steps = run(sess, max_new_tokens=n)
    assert len(steps) == n and all(s[0] is not None for s in steps)
    assert hook.calls == n  # one prompt forward + n - 1 decode steps; no forward for an unused token


def test_streaming_pieces_join_to_ask(sess, tokenizer):
    pieces = list(sess.stream_ask("Who plays the violin?", max_new_tokens=12))
    assert len(pieces) > 1
    assert "".join(pieces).strip() == sess.ask("Who plays the violin?", max_new_tokens=12)
    tokens = [s[0] for s in run(sess, "Who plays the violin?", max_new_tokens=12) if s[0] is not None]
    assert "".join(pieces) == tokenizer.decode(tokens, skip_special_tokens=True).lstrip()


def test_stream_text_matches_decode_on_random_ids(tokenizer):
    """Pieces always join to the full decode without its leading whitespace, including byte tokens that form or
    break multi-byte characters."""
    byte_ids = [i for i in range(3, 400) if "\ufffd" in tokenizer.decode([i])]
    assert byte_ids, "expected byte-level tokens that decode to an incomplete character"
    utf8 = tokenizer.encode("é中🐱 ok", add_special_tokens=False)
    g = torch.Generator().manual_seed(0)
    for trial in range(200):
        n = int(torch.randint(1, 12, (), generator=g))
        pool = torch.tensor(byte_ids + utf8 + [1, 0, 198, 30, 2000, 12000, 49151])
        ids = pool[torch.randint(len(pool), (n,), generator=g)].tolist()
        ids = [i for i in ids if i != EOS]
        joined = "".join(stream_text(tokenizer, iter([[i] for i in ids] + [[None]])))
        assert joined == tokenizer.decode(ids, skip_special_tokens=True).lstrip(), ids
    # a stream ends at the first None
    assert "".join(stream_text(tokenizer, iter([[utf8[0]], [None], [utf8[1]]]))) == tokenizer.decode(utf8[:1])


def test_stream_text_drops_the_replys_leading_space(tokenizer):
    """A reply whose first token is a space-prefixed word (a value recalled as written in a sentence) starts
    at the word; spaces inside the reply stay."""
    ids = tokenizer.encode(" Mochi is her cat", add_special_tokens=False)
    pieces = list(stream_text(tokenizer, iter([[i] for i in ids] + [[None]])))
    assert "".join(pieces) == "Mochi is her cat" and not pieces[0].startswith(" ")
    space = tokenizer.encode(" ", add_special_tokens=False)
    assert "".join(stream_text(tokenizer, iter([[i] for i in space] + [[None]]))) == ""


def test_sampling_is_reproducible_with_a_seed(sess):
    a = run(sess, max_new_tokens=8, do_sample=True, seed=11)
    b = run(sess, max_new_tokens=8, do_sample=True, seed=11)
    c = run(sess, max_new_tokens=8, do_sample=True, seed=12)
    greedy = run(sess, max_new_tokens=8)
    assert a == b
    assert a != c and a != greedy
    assert run(sess, max_new_tokens=8, do_sample=True, seed=3, top_k=1) == greedy
    assert run(sess, max_new_tokens=8, do_sample=True, seed=3, top_p=1e-9) == greedy
    assert run(sess, max_new_tokens=8, do_sample=True, seed=3, temperature=1e-4) == greedy
    # top_k / top_p restrict the choice to the best tokens
    for cfg in (dict(top_k=5), dict(top_p=0.001, temperature=100.0)):
        assert run(sess, max_new_tokens=8, do_sample=True, seed=4, **cfg) != a


def test_top_k_samples_only_from_the_top_k(sess, lm_head_hook):
    hook = lm_head_hook(sess.model, forbid=True)
    steps = run(sess, max_new_tokens=6, do_sample=True, seed=9, top_k=3, temperature=50.0)
    for (tok,), logits in zip(steps, hook.logits):
        assert tok in logits[0].topk(3).indices.tolist()


@pytest.mark.parametrize("kw", [dict(max_new_tokens=0), dict(max_new_tokens=-3), dict(max_new_tokens=2.5),
                                dict(max_new_tokens="8"), dict(max_new_tokens=True),
                                dict(temperature=0), dict(temperature=-1.0), dict(temperature=float("nan")),
                                dict(temperature="1"), dict(top_p=0), dict(top_p=1.5), dict(top_p=float("nan")),
                                dict(top_k=-1), dict(top_k=2.5), dict(seed="7"), dict(seed=1.5)])
def test_generation_config_bad_values(kw):
    with pytest.raises(ValueError, match=next(iter(kw))):
        GenerationConfig(**kw)


def test_generation_config_good_values():
    cfg = GenerationConfig(max_new_tokens=1, do_sample=True, temperature=0.5, top_k=3, top_p=0.9, seed=0)
    assert (cfg.max_new_tokens, cfg.top_k, cfg.seed) == (1, 3, 0)
    GenerationConfig(temperature=2, top_p=1)


def test_cached_decoding_matches_full_forward(sess, lm_head_hook):
    """Each step's logits (KV cache + memory read) equal a fresh forward over prompt + generated tokens."""
    hook = lm_head_hook(sess.model, forbid=True)
    prompt = sess.prompt_ids("Which instrument?")
    steps = list(generate_tokens(sess.model, [prompt], sess.state, GenerationConfig(max_new_tokens=6), sess.stop,
                                 sess.pad_id))
    got = [lg.clone() for lg in hook.logits]
    tokens = [s[0] for s in steps]
    assert len(got) == 6
    with torch.no_grad(), use_memory(sess.model, sess.state.clone(), write=False):
        for k in range(6):
            ref = sess.model(input_ids=torch.tensor([prompt + tokens[:k]])).logits[:, -1]
            ref[..., EOS] = float("-inf")
            torch.testing.assert_close(got[k], ref, atol=2e-5, rtol=1e-4)


def test_batched_left_padded_rows_match_single_rows(tiny, tokenizer, lm_head_hook):
    a = MemorySession(tiny, tokenizer, window_tokens=0)
    a.write(FACTS)
    b = MemorySession(tiny, tokenizer, window_tokens=0)
    b.write([{"role": "user", "content": "I work at a bakery in Lyon."}])
    pa, pb = a.prompt_ids("Where does Ana live and what does she play?"), b.prompt_ids("Where?")
    assert len(pa) != len(pb)
    cfg = GenerationConfig(max_new_tokens=5)
    hook = lm_head_hook(tiny, forbid=True)
    singles = []
    for s, p in ((a, pa), (b, pb)):
        start = len(hook.logits)
        toks = [t[0] for t in generate_tokens(tiny, [p], s.state, cfg, s.stop, s.pad_id)]
        singles.append((toks, torch.cat(hook.logits[start:])))
    start = len(hook.logits)
    both = list(generate_tokens(tiny, [pa, pb], MemoryState.cat([a.state, b.state]), cfg, a.stop, a.pad_id))
    batched = torch.stack(hook.logits[start:], 1)  # [2, steps, V]
    for row, (toks, logits) in enumerate(singles):
        assert [t[row] for t in both] == toks
        torch.testing.assert_close(batched[row], logits, atol=2e-5, rtol=1e-4)


def test_prompts_after_a_shared_prefix_match_whole_prompts(sess, lm_head_hook):
    """`generate_tokens(prefix=...)`: the prefix's KV cache (computed once, under the memory) continued by
    left-padded rows gives the tokens and logits of generating from prefix + row; the prefix is reusable."""
    hook = lm_head_hook(sess.model, forbid=True)
    prompt = sess.prompt_ids("Where does Ana live?")
    cut = len(sess.renderer.system_ids)
    head, rows = prompt[:cut], [prompt[cut:], prompt[cut + 3:]]
    cfg = GenerationConfig(max_new_tokens=5)
    whole = list(generate_tokens(sess.model, [head + r for r in rows], MemoryState.cat([sess.state] * 2), cfg,
                                 sess.stop, sess.pad_id))
    want = torch.stack(hook.logits, 1)
    pc = PrefixCache(sess.model, head, sess.state)
    for _ in range(2):
        start = len(hook.logits)
        got = list(generate_tokens(sess.model, rows, MemoryState.cat([sess.state] * 2), cfg, sess.stop, sess.pad_id,
                                   prefix=pc))
        assert got == whole
        torch.testing.assert_close(torch.stack(hook.logits[start:], 1), want, atol=2e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="memory the prefix was computed with"):
        prefill(sess.model, rows, None, sess.pad_id, prefix=pc)
    with pytest.raises(ValueError, match="one row"):
        PrefixCache(sess.model, head, MemoryState.cat([sess.state] * 2))


def test_bare_backbone_and_edge_cases(tiny, tokenizer):
    prompt = tokenizer.encode("Hello", add_special_tokens=False)
    steps = list(generate_tokens(tiny, [prompt], None, GenerationConfig(max_new_tokens=2), {EOS}, 0))
    assert 1 <= len(steps) <= 2
    assert list(generate_tokens(tiny, [], None, GenerationConfig(), {EOS}, 0)) == []
    with pytest.raises(ValueError, match="empty"):
        list(generate_tokens(tiny, [prompt, []], None, GenerationConfig(), {EOS}, 0))
    # with the zero state, memory reads add nothing: same tokens as the bare backbone
    zero = MemoryState.zeros(tiny)
    assert list(generate_tokens(tiny, [prompt], zero, GenerationConfig(max_new_tokens=4), set(), 0)) == \
        list(generate_tokens(tiny, [prompt], None, GenerationConfig(max_new_tokens=4), set(), 0))


def test_kv_cache_bytes_and_has_memory(tiny):
    # 2 (k, v) x 2 layers x 2 kv heads x head_dim 16 x tokens x 4 bytes
    assert kv_cache_bytes(tiny, 100) == 2 * 2 * 2 * 16 * 100 * 4
    assert kv_cache_bytes(tiny, 100, bytes_per_value=2) == 2 * 2 * 2 * 16 * 100 * 2
    assert has_memory(tiny)
    assert not has_memory(torch.nn.Linear(2, 2))


def test_interleaved_streams_keep_their_own_memory(tiny, tokenizer):
    """Two paused streams on one model: each reads its own memory, and nothing stays bound afterwards."""
    from deltamem.adapter.binding import _ACTIVE

    a = MemorySession(tiny, tokenizer, window_tokens=0)
    a.write(FACTS)
    b = MemorySession(tiny, tokenizer, window_tokens=0)
    b.write([{"role": "user", "content": "I work at a bakery in Lyon and I love jazz."}])
    q = "Tell me everything."
    solo = [a.ask(q, max_new_tokens=6), b.ask(q, max_new_tokens=6)]
    assert solo[0] != solo[1]  # the memories differ enough to tell the answers apart
    ids = torch.tensor([a.prompt_ids(q)])
    with torch.no_grad():
        bare = tiny(input_ids=ids).logits[0, -1]

    g1, g2 = a.stream_ask(q, max_new_tokens=6), b.stream_ask(q, max_new_tokens=6)
    p1, p2 = [next(g1)], [next(g2)]
    with torch.no_grad():  # a bare call while both streams wait sees no memory
        torch.testing.assert_close(tiny(input_ids=ids).logits[0, -1], bare, rtol=0, atol=0)
    p1.append(next(g1))
    g1.close()  # closing one stream must not unbind the other
    p2 += list(g2)
    assert "".join(p2).strip() == solo[1]
    g1 = a.stream_ask(q, max_new_tokens=6)
    assert "".join(g1).strip() == solo[0]
    assert _ACTIVE.get() == ()
    with torch.no_grad():
        torch.testing.assert_close(tiny(input_ids=ids).logits[0, -1], bare, rtol=0, atol=0)
