"""Message validation, chat-template rendering and write-pass planning (deltamem.runtime.render)."""

from __future__ import annotations

import copy

import pytest

from deltamem.runtime.render import Renderer, check_messages, message_text, plan_writes

pytestmark = pytest.mark.usefixtures("one_thread")

SYSTEM = "You are a test assistant."


@pytest.fixture(scope="module")
def renderer(tokenizer):
    return Renderer(tokenizer, SYSTEM)


def test_check_messages_normalises_and_names_the_culprit():
    out = check_messages([{"role": "user", "content": "hi", "name": "Ana", "timestamp": "1 May", "dia_id": "D1:1",
                           "extra": 3}, {"role": "assistant", "content": "yo", "name": None}])
    assert out == [{"role": "user", "content": "hi", "name": "Ana", "timestamp": "1 May"},
                   {"role": "assistant", "content": "yo"}]
    assert check_messages({"role": "system", "content": "x"}) == [{"role": "system", "content": "x"}]
    with pytest.raises(ValueError, match=r"msgs\[1\] has unknown role 'bot'"):
        check_messages([{"role": "user", "content": "a"}, {"role": "bot", "content": "b"}], where="msgs")
    with pytest.raises(ValueError, match=r"messages\[0\]\.timestamp"):
        check_messages([{"role": "user", "content": "a", "timestamp": 2024}])


def test_message_text():
    assert message_text({"role": "user", "content": "hi"}) == "hi"
    assert message_text({"role": "user", "content": "hi", "name": "Ana"}) == "Ana: hi"
    assert message_text({"role": "user", "content": "hi", "name": "Ana", "timestamp": "1 May"}) == "[1 May] Ana: hi"


def test_messages_render_alone_and_concatenate_to_the_template(renderer, tokenizer):
    msgs = [{"role": "user", "content": "Hello, I'm Ana.", "name": "Ana", "timestamp": "1 May 2024"},
            {"role": "assistant", "content": "Nice to meet you."}]
    full = tokenizer.apply_chat_template([{"role": "system", "content": SYSTEM}]
                                         + [{"role": m["role"], "content": message_text(m)} for m in msgs],
                                         tokenize=False)
    assert tokenizer.decode(renderer.system_ids) + "".join(renderer.message(m) for m in msgs) == full
    assert "[1 May 2024] Ana: Hello, I'm Ana." in renderer.message(msgs[0])
    prompt = tokenizer.decode(renderer.prompt(msgs, "Who am I?"))
    gen = tokenizer.apply_chat_template([{"role": "system", "content": SYSTEM}]
                                        + [{"role": m["role"], "content": message_text(m)} for m in msgs]
                                        + [{"role": "user", "content": "Who am I?"}],
                                        tokenize=False, add_generation_prompt=True)
    assert prompt == gen


def test_sentence_spans_follow_sentences(renderer, tokenizer):
    m = {"role": "user", "content": "I like cats. The dog barked! Why? Yes, really."}
    ids, sents = renderer.message_tokens(m, "sentence")
    assert ids == renderer.message_tokens(m, "token")[0] and len(sents) == len(ids)
    assert sents == sorted(sents) and sents[0] == 0
    groups = {}
    for i, s in zip(ids, sents):
        groups.setdefault(s, []).append(i)
    texts = [tokenizer.decode(g) for _, g in sorted(groups.items())]
    assert "".join(texts) == renderer.message(m)
    assert texts[0].endswith("I like cats.")  # the next sentence's first word is not glued to this one
    assert [t.strip() for t in texts[1:3]] == ["The dog barked!", "Why?"]
    assert texts[3].strip().startswith("Yes, really.")


def test_plan_layout_context_and_masks(renderer):
    msgs = [{"role": "user", "content": f"Short message number {i}."} for i in range(5)]
    context = list(range(1000, 1040))
    passes, rendered = plan_writes(renderer, context, msgs, segment_tokens=30, context_tokens=12,
                                   granularity="message")
    sys_ids = renderer.system_ids
    stream = list(context)
    span = 0
    for p in passes:
        ids, wm, sp = p.input_ids[0].tolist(), p.write_mask[0].tolist(), p.span_ids[0].tolist()
        n_ctx = len(ids) - p.new_tokens
        assert ids[:len(sys_ids)] == sys_ids
        assert ids[len(sys_ids):n_ctx] == stream[-12:]  # the last 12 tokens before this pass, read-only
        assert wm == [False] * n_ctx + [True] * p.new_tokens
        assert sp[:n_ctx] == [-1] * n_ctx
        assert p.new_tokens <= 30
        new = ids[n_ctx:]
        got_spans = sp[n_ctx:]
        # whole messages, one span id per message
        k = 0
        for _ in range(p.messages):
            r = rendered[span]
            assert new[k:k + len(r)] == r and set(got_spans[k:k + len(r)]) == {span}
            k += len(r)
            span += 1
        assert k == p.new_tokens
        stream += new
    assert span == len(msgs)


def test_plan_token_mode_and_no_context(renderer):
    msgs = [{"role": "user", "content": "One."}, {"role": "assistant", "content": "Two."}]
    passes, rendered = plan_writes(renderer, list(range(100, 150)), msgs, segment_tokens=1000, context_tokens=0)
    assert len(passes) == 1
    assert passes[0].input_ids[0].tolist() == renderer.system_ids + rendered[0] + rendered[1]
    assert passes[0].messages == 2
    with pytest.raises(ValueError, match="segment_tokens"):
        plan_writes(renderer, [], msgs, segment_tokens=0, context_tokens=0)


@pytest.mark.parametrize("granularity", ["token", "message", "sentence"])
def test_plan_splits_a_long_message(renderer, granularity):
    long = {"role": "user", "content": " ".join(f"Sentence {i} is here." for i in range(15))}
    short = {"role": "assistant", "content": "Ok."}
    passes, rendered = plan_writes(renderer, [], [short, long, short], segment_tokens=20, context_tokens=8,
                                   granularity=granularity)
    assert len(rendered[1]) > 40
    new = [p.input_ids[0, -p.new_tokens:].tolist() for p in passes]
    assert sum(new, []) == rendered[0] + rendered[1] + rendered[2]
    assert all(p.new_tokens <= 20 for p in passes)
    assert sum(p.messages for p in passes) == 3
    spans = sum((p.span_ids[0, -p.new_tokens:].tolist() for p in passes), [])
    assert spans == sorted(spans) and min(spans) == 0  # spans never go backwards
    if granularity == "sentence":
        assert len(set(spans)) > 15  # at least one span per sentence


def test_template_less_tokenizer_falls_back_to_plain_text(tokenizer):
    plain = copy.deepcopy(tokenizer)
    plain.chat_template = None
    r = Renderer(plain, "sys")
    assert r.message({"role": "user", "content": "hi"}) == "user: hi\n"
    prompt = plain.decode(r.prompt([{"role": "user", "content": "a"}], "b?"))
    assert prompt == "system: sys\nuser: a\nuser: b?\nassistant: "
