"""MemorySession on a tiny random llama with the real SmolLM2 tokenizer (shared/DESIGN.md section 4)."""

from __future__ import annotations

import copy
import os

import pytest
import torch

from deltamem.adapter import DeltaMemConfig, MemoryState
from deltamem.runtime import session as session_mod
from deltamem.runtime.render import plan_writes
from deltamem.runtime.session import STATE_FILE, MemorySession

pytestmark = pytest.mark.usefixtures("one_thread")

CONVERSATION = [
    {"role": "user", "name": "Maya", "timestamp": "3 March 2026",
     "content": "Hi! I'm Maya. I adopted a grey kitten and named her Pixel."},
    {"role": "assistant", "content": "Congratulations! Pixel is a lovely name."},
    {"role": "user", "name": "Maya", "timestamp": "19 April 2026",
     "content": "I started a new job: I'm a nurse at Lakeside Hospital now."},
    {"role": "assistant", "content": "That's great news. Nursing must keep you busy."},
    {"role": "user", "name": "Maya", "timestamp": "2 June 2026",
     "content": "I've been learning the cello. My teacher is called Mr Okafor."},
    {"role": "assistant", "content": "The cello is a beautiful instrument."},
    {"role": "user", "content": "We had a long meeting about parking rules. Nothing exciting."},
    {"role": "assistant", "content": "Parking rules are rarely exciting!"},
]


def snapshot(sess: MemorySession):
    return sess.state.to_bytes(), copy.deepcopy(sess.transcript), sess.tokens_written, copy.deepcopy(sess._tokens)


def is_zero(state: MemoryState) -> bool:
    return all(not bool(t.any()) for t in state.tensors)


# ---- reading is read-only ---------------------------------------------------------------------
def test_write_then_ask_leaves_state_unchanged(tiny, tokenizer):
    sess = MemorySession(tiny, tokenizer)
    n = sess.write(CONVERSATION[:4])
    assert n == sum(len(t) for t in sess._tokens) > 0
    assert not is_zero(sess.state)
    before = snapshot(sess)
    answer = sess.ask("What is the kitten called?", max_new_tokens=5)
    assert isinstance(answer, str)
    list(sess.stream_ask("And the hospital?", max_new_tokens=3))
    assert snapshot(sess) == before


def test_memory_changes_the_answer_logits(tiny, tokenizer, lm_head_hook):
    """The memory is actually read while answering: same prompt, empty vs written memory."""
    full = MemorySession(tiny, tokenizer, window_tokens=0)
    full.write(CONVERSATION)
    blank = MemorySession(tiny, tokenizer, window_tokens=0)
    assert full.prompt_ids("Who?") == blank.prompt_ids("Who?")
    hook = lm_head_hook(tiny)
    full.ask("Who?", max_new_tokens=1)
    blank.ask("Who?", max_new_tokens=1)
    assert len(hook.logits) == 2
    assert not torch.allclose(hook.logits[0], hook.logits[1], atol=1e-4)


# ---- chat writes exactly the new turns --------------------------------------------------------
def test_chat_writes_exactly_the_new_turns(tiny, tokenizer):
    a = MemorySession(tiny, tokenizer, context_tokens=32)
    a.write(CONVERSATION[:2])
    replies = [a.chat(q, max_new_tokens=4) for q in ("Hello there.", "What did I adopt?", "Thanks, bye!")]
    assert [m["role"] for m in a.transcript] == ["user", "assistant"] * 4
    assert [m["content"] for m in a.transcript[3::2]] == replies
    assert all(r.strip() for r in replies)

    b = MemorySession(tiny, tokenizer, context_tokens=32)
    b.write(CONVERSATION[:2])
    for user, reply in zip(a.transcript[2::2], a.transcript[3::2]):
        b.write([user, reply])
    assert b.state.to_bytes() == a.state.to_bytes()
    assert b.transcript == a.transcript
    assert b.tokens_written == a.tokens_written


def test_stream_chat_writes_only_when_the_stream_ends(tiny, tokenizer):
    sess = MemorySession(tiny, tokenizer)
    stream = sess.stream_chat("Hi!", max_new_tokens=3)
    pieces = [next(stream)]
    assert sess.transcript == [] and is_zero(sess.state)
    pieces += list(stream)
    assert len(sess.transcript) == 2 and not is_zero(sess.state)
    assert sess.transcript == [{"role": "user", "content": "Hi!"},
                               {"role": "assistant", "content": "".join(pieces).strip() or "…"}]


def test_empty_reply_is_written_as_a_placeholder(tiny, tokenizer, lm_head_hook):
    sess = MemorySession(tiny, tokenizer)
    lm_head_hook(tiny, eos_after=0)  # EOS first: the model says nothing
    assert sess.ask("Anything?") == ""
    reply = sess.chat("Anything?")
    assert reply == "…" == sess.transcript[-1]["content"]
    assert [m["role"] for m in sess.transcript] == ["user", "assistant"]


# ---- save / load ------------------------------------------------------------------------------
SETTINGS = dict(window_tokens=37, system_prompt="You remember things. Ünïcode ✓", segment_tokens=50,
                context_tokens=9, max_write_tokens=5000)


def test_save_load_bit_exact(tiny, tokenizer, tmp_path):
    sess = MemorySession(tiny, tokenizer, **SETTINGS)
    sess.write(CONVERSATION)
    sess.write({"role": "user", "content": "Émoji 🐱 and ünïcode survive the round trip."})
    d = tmp_path / "sessions" / "maya"  # does not exist yet
    sess.save(d)
    assert sorted(os.listdir(d)) == [STATE_FILE]
    sess.save(d)  # overwriting leaves no temp files either
    assert sorted(os.listdir(d)) == [STATE_FILE]
    assert os.path.getsize(d / STATE_FILE) < 64 * 1024

    back = MemorySession.load(d, tiny, tokenizer)
    assert back.state.to_bytes() == sess.state.to_bytes()
    assert back.transcript == sess.transcript
    assert back.tokens_written == sess.tokens_written
    assert back._tokens == sess._tokens
    for k, v in SETTINGS.items():
        assert getattr(back, k) == v, k
    assert back.ask("Pet?", max_new_tokens=4) == sess.ask("Pet?", max_new_tokens=4)
    # and the loaded session keeps writing exactly like the original
    more = [{"role": "user", "content": "One more fact: my bike is red."}]
    sess.write(more)
    back.write(more)
    assert back.state.to_bytes() == sess.state.to_bytes()

    over = MemorySession.load(d, tiny, tokenizer, window_tokens=0)
    assert over.window_tokens == 0 and over.segment_tokens == SETTINGS["segment_tokens"]


def test_load_refuses_another_adapter(tiny, tokenizer, make_tiny, tmp_path):
    sess = MemorySession(tiny, tokenizer)
    sess.write(CONVERSATION[:2])
    sess.save(tmp_path)
    reinit = make_tiny(adapter_seed=123)  # same backbone and config, re-initialised adapter weights
    with pytest.raises(ValueError, match="adapter"):
        MemorySession.load(tmp_path, reinit, tokenizer)
    other_rank = make_tiny(DeltaMemConfig(rank=4))
    with pytest.raises(ValueError, match="adapter"):
        MemorySession.load(tmp_path, other_rank, tokenizer)
    other_heads = make_tiny(DeltaMemConfig(heads=("q", "k", "v", "o")))  # same state shape, other adapter
    with pytest.raises(ValueError, match="adapter"):
        MemorySession.load(tmp_path, other_heads, tokenizer)
    other_backbone = make_tiny(seed=7, adapter_seed=0)
    with pytest.raises(ValueError, match="backbone"):
        MemorySession.load(tmp_path, other_backbone, tokenizer)
    assert MemorySession.load(tmp_path, tiny, tokenizer).state.to_bytes() == sess.state.to_bytes()


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty", "header"])
def test_corrupted_state_file_is_a_value_error(tiny, tokenizer, tmp_path, damage):
    sess = MemorySession(tiny, tokenizer)
    sess.write(CONVERSATION[:2])
    sess.save(tmp_path)
    path = tmp_path / STATE_FILE
    data = path.read_bytes()
    bad = {"garbage": b"this is not a safetensors file at all" * 10,
           "truncated": data[: len(data) // 2],
           "empty": b"",
           "header": data[:8] + b"{" * 20 + data[28:]}[damage]
    path.write_bytes(bad)
    with pytest.raises(ValueError, match=STATE_FILE):
        MemorySession.load(tmp_path, tiny, tokenizer)


def test_load_refuses_a_plain_memory_state(tiny, tokenizer, tmp_path):
    MemoryState.zeros(tiny).save(tmp_path / STATE_FILE)
    with pytest.raises(ValueError, match="not a deltamem session"):
        MemorySession.load(tmp_path, tiny, tokenizer)
    with pytest.raises(FileNotFoundError):
        MemorySession.load(tmp_path / "missing", tiny, tokenizer)


def test_failed_save_keeps_the_old_file_and_no_temp(tiny, tokenizer, tmp_path, monkeypatch):
    sess = MemorySession(tiny, tokenizer)
    sess.write(CONVERSATION[:2])
    sess.save(tmp_path)
    old = (tmp_path / STATE_FILE).read_bytes()
    sess.write(CONVERSATION[2:4])

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        sess.save(tmp_path)
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == [STATE_FILE]
    assert (tmp_path / STATE_FILE).read_bytes() == old


# ---- segmentation -----------------------------------------------------------------------------
@pytest.mark.parametrize("granularity", ["token", "message", "sentence"])
def test_one_long_write_equals_its_segments(make_tiny, tokenizer, granularity):
    model = make_tiny(DeltaMemConfig(write_granularity=granularity))
    kw = dict(segment_tokens=60, context_tokens=16)
    whole = MemorySession(model, tokenizer, **kw)
    whole.write(CONVERSATION[:1])  # so the first planned pass already has read-only context
    passes, rendered = plan_writes(whole.renderer, whole._context_ids(16), CONVERSATION[1:],
                                   segment_tokens=60, context_tokens=16, granularity=granularity)
    assert max(len(r) for r in rendered) <= 60  # every message fits a pass: passes hold whole messages
    counts = [p.messages for p in passes]
    assert len(passes) >= 3 and sum(counts) == len(CONVERSATION) - 1

    parts = MemorySession(model, tokenizer, **kw)
    parts.write(CONVERSATION[:1])
    whole.write(CONVERSATION[1:])
    i = 1
    for c in counts:
        parts.write(CONVERSATION[i:i + c])
        i += c
    assert parts.state.to_bytes() == whole.state.to_bytes()
    assert parts.transcript == whole.transcript == CONVERSATION
    assert parts.tokens_written == whole.tokens_written


def test_write_context_is_used(tiny, tokenizer):
    """Read-only context changes the hidden states, hence the state (so the equality above means something)."""
    states = []
    for ctx in (0, 16):
        s = MemorySession(tiny, tokenizer, segment_tokens=60, context_tokens=ctx)
        s.write(CONVERSATION)
        states.append(s.state.to_bytes())
    assert states[0] != states[1]


def test_message_longer_than_a_segment_is_split_and_written(tiny, tokenizer):
    long = {"role": "user", "content": " ".join(f"Fact {i}: the box number {i} is blue." for i in range(20))}
    sess = MemorySession(tiny, tokenizer, segment_tokens=32)
    ids = sess.renderer.encode(sess.renderer.message(long))
    assert len(ids) > 3 * 32
    passes, _ = plan_writes(sess.renderer, [], [long], segment_tokens=32, context_tokens=sess.context_tokens)
    assert len(passes) == -(-len(ids) // 32)
    assert all(p.new_tokens <= 32 for p in passes) and sum(p.new_tokens for p in passes) == len(ids)
    assert sess.write([long]) == len(ids) == sess.tokens_written
    assert sess.transcript == [long] and sess._tokens == [ids]
    assert not is_zero(sess.state)

    one_pass = MemorySession(tiny, tokenizer, segment_tokens=4096)
    one_pass.write([long])
    assert one_pass.tokens_written == len(ids)
    # the tail of the message was written too: dropping it gives another state
    trunc = MemorySession(tiny, tokenizer, segment_tokens=32)
    trunc.write([{"role": "user", "content": long["content"][: len(long["content"]) // 2]}])
    assert trunc.state.to_bytes() != sess.state.to_bytes()


def test_progress_bar_write_matches(tiny, tokenizer):
    quiet = MemorySession(tiny, tokenizer, segment_tokens=40)
    loud = MemorySession(tiny, tokenizer, segment_tokens=40, progress=True)
    quiet.write(CONVERSATION)
    loud.write(CONVERSATION)
    assert quiet.state.to_bytes() == loud.state.to_bytes()


# ---- bad input --------------------------------------------------------------------------------
BAD_WRITES = {
    "empty content": [{"role": "user", "content": ""}],
    "blank content": [{"role": "user", "content": "  \n "}],
    "unknown role": [{"role": "bot", "content": "hi"}],
    "no role": [{"content": "hi"}],
    "not a dict": ["hello"],
    "a string": "hello",
    "non-text content": [{"role": "user", "content": 5}],
    "non-text name": [{"role": "user", "content": "hi", "name": 5}],
    "bad second message": [{"role": "user", "content": "fine"}, {"role": "user", "content": None}],
}


@pytest.mark.parametrize("case", sorted(BAD_WRITES))
def test_bad_write_raises_and_changes_nothing(tiny, tokenizer, case):
    sess = MemorySession(tiny, tokenizer)
    sess.write(CONVERSATION[:2])
    before = snapshot(sess)
    with pytest.raises(ValueError):
        sess.write(BAD_WRITES[case])
    assert snapshot(sess) == before


def test_empty_list_writes_nothing(tiny, tokenizer):
    sess = MemorySession(tiny, tokenizer)
    sess.write(CONVERSATION[:2])
    before = snapshot(sess)
    assert sess.write([]) == 0
    assert snapshot(sess) == before


def test_write_over_max_write_tokens_raises_and_changes_nothing(tiny, tokenizer):
    sess = MemorySession(tiny, tokenizer, max_write_tokens=40)
    sess.write(CONVERSATION[1:2])
    before = snapshot(sess)
    with pytest.raises(ValueError, match="max_write_tokens"):
        sess.write(CONVERSATION)
    assert snapshot(sess) == before


def test_failed_pass_commits_nothing(tiny, tokenizer, monkeypatch):
    sess = MemorySession(tiny, tokenizer, segment_tokens=40)
    sess.write(CONVERSATION[:1])
    before = snapshot(sess)
    real, calls = session_mod.run_write, []

    def flaky(model, state, passes, pad_id):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("out of memory")
        return real(model, state, passes, pad_id)

    monkeypatch.setattr(session_mod, "run_write", flaky)
    with pytest.raises(RuntimeError):
        sess.write(CONVERSATION[1:])
    assert snapshot(sess) == before


@pytest.mark.parametrize("question", ["", "   ", None, 3])
def test_empty_question_raises(tiny, tokenizer, question):
    sess = MemorySession(tiny, tokenizer)
    sess.write(CONVERSATION[:2])
    before = snapshot(sess)
    with pytest.raises(ValueError, match="question"):
        sess.ask(question)
    with pytest.raises(ValueError, match="question"):
        list(sess.stream_ask(question))
    with pytest.raises(ValueError, match="question"):
        sess.chat(question)
    assert snapshot(sess) == before


@pytest.mark.parametrize("kw", [dict(window_tokens=-1), dict(segment_tokens=0), dict(context_tokens=-5),
                                dict(max_write_tokens=0), dict(window_tokens=1.5)])
def test_bad_settings(tiny, tokenizer, kw):
    with pytest.raises(ValueError, match=next(iter(kw))):
        MemorySession(tiny, tokenizer, **kw)


def test_state_must_match_the_model(tiny, tokenizer, make_tiny):
    other = make_tiny(DeltaMemConfig(rank=4))
    with pytest.raises(ValueError, match="rank"):
        MemorySession(tiny, tokenizer, state=MemoryState.zeros(other))
    with pytest.raises(ValueError, match="one memory row"):
        MemorySession(tiny, tokenizer, state=MemoryState.zeros(tiny, batch_size=2))


# ---- the answer window ------------------------------------------------------------------------
def test_window_holds_the_last_messages_within_budget(tiny, tokenizer):
    msgs = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"Message number {i}: codeword{i}x."}
            for i in range(6)]
    sess = MemorySession(tiny, tokenizer)
    sess.write(msgs)
    lens = [len(t) for t in sess._tokens]
    q = "Which codewords?"

    def prompt_text(window):
        sess.window_tokens = window
        return tokenizer.decode(sess.prompt_ids(q))

    text = prompt_text(lens[-1] + lens[-2])  # exactly the last two messages
    assert "codeword5x" in text and "codeword4x" in text and "codeword3x" not in text
    assert text.index("codeword4x") < text.index("codeword5x") < text.index(q)
    text = prompt_text(lens[-1] + lens[-2] - 1)  # whole messages only
    assert "codeword5x" in text and "codeword4x" not in text
    text = prompt_text(10**6)
    assert all(f"codeword{i}x" in text for i in range(6))
    assert sess.prompt_ids(q) == sess.renderer.prompt(msgs, q)

    sess.window_tokens = 0
    ids = sess.prompt_ids(q)
    assert ids == sess.renderer.prompt([], q)
    assert "codeword0x" not in tokenizer.decode(ids) and "codeword5x" not in tokenizer.decode(ids)
    assert tokenizer.decode(ids).startswith(tokenizer.decode(sess.renderer.system_ids))
    assert sess.system_prompt in tokenizer.decode(ids)


# ---- span granularities -----------------------------------------------------------------------
def test_span_granularities_write_and_differ_from_token_mode(make_tiny, tokenizer):
    states = {}
    for g in ("token", "message", "sentence"):
        model = make_tiny(DeltaMemConfig(write_granularity=g))
        sess = MemorySession(model, tokenizer, segment_tokens=64)
        n = sess.write(CONVERSATION)
        assert n == sum(len(t) for t in sess._tokens)
        assert not is_zero(sess.state)
        assert isinstance(sess.ask("Name of the cat?", max_new_tokens=3), str)
        before = sess.state.to_bytes()
        sess.chat("Tell me more.", max_new_tokens=3)  # span modes write after generating (read-only)
        assert sess.state.to_bytes() != before
        states[g] = before
    assert len(set(states.values())) == 3


def test_stats_and_reset(tiny, tokenizer):
    sess = MemorySession(tiny, tokenizer)
    n = sess.write(CONVERSATION[:3])
    st = sess.stats()
    assert st["turns"] == 3 and st["tokens_written"] == n
    assert st["state_bytes"] == 2 * 1 * 8 * 8 * 4  # 2 layers x H=1 x r x r float32
    assert st["state_file_bytes"] == len(sess.state.to_bytes())
    sess.reset()
    assert sess.transcript == [] and sess.tokens_written == 0 and is_zero(sess.state)
    assert sess.stats()["turns"] == 0


def test_generation_options_pass_through(tiny, tokenizer):
    sess = MemorySession(tiny, tokenizer)
    sess.write(CONVERSATION[:2])
    with pytest.raises(ValueError, match="temperature"):
        sess.ask("Hi?", do_sample=True, temperature=0)
    a = sess.ask("Hi?", do_sample=True, seed=5, max_new_tokens=6)
    b = sess.ask("Hi?", do_sample=True, seed=5, max_new_tokens=6)
    assert a == b
