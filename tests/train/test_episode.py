"""Episode encoding: the student reads the memory (and its window), the teacher the whole history, over
the same target tokens; the write pass is the session's; the shared-prefix teacher equals a full pass."""

from __future__ import annotations

import torch

from deltamem.runtime.render import Renderer, plan_writes
from deltamem.runtime.session import DEFAULT_SYSTEM_PROMPT
from deltamem.train.episode import Episode, Query, collate, encode_episode, target_pass, teacher_pass, window_ids

HIST = [{"role": "user", "name": "Ana", "timestamp": "1 May 2024", "content": "I keep bees in Tromso."},
        {"role": "assistant", "name": "Bo", "timestamp": "1 May 2024", "content": "Lovely!"},
        {"role": "user", "name": "Ana", "timestamp": "2 May 2024", "content": "The weather was grey today."}]


def _enc(tokenizer, queries, **kw):
    r = Renderer(tokenizer, DEFAULT_SYSTEM_PROMPT)
    args = {"granularity": "token", "max_write_tokens": 512, "max_read_tokens": 256, "end_id": 2} | kw
    return r, encode_episode(r, Episode(HIST, queries), **args)


def test_student_holds_no_history_and_teacher_all_of_it(tokenizer):
    r, e = _enc(tokenizer, [Query("Where does Ana keep bees?", "Tromso")])
    msgs = [r.encode(r.message(m)) for m in HIST]
    read = e.reads[0]
    target = r.encode("Tromso") + [2]
    assert read.student[read.student_start:] == target == read.suffix[read.suffix_start:]
    assert read.student[: len(r.system_ids)] == r.system_ids
    assert read.student[len(r.system_ids): read.student_start] == read.suffix[: read.suffix_start]  # no history
    assert e.context == r.system_ids + [t for m in msgs for t in m]
    assert read.answer and not read.windowed
    # the write pass is the one a session plans for the same messages
    passes, _ = plan_writes(r, [], HIST, segment_tokens=512, context_tokens=0, granularity="token")
    assert torch.equal(e.write.input_ids, passes[0].input_ids)


def test_window_keeps_the_last_whole_messages_that_fit(tokenizer):
    msgs = [[1, 2, 3], [4, 5], [6, 7, 8, 9]]
    assert window_ids(msgs, 4) == [6, 7, 8, 9]
    assert window_ids(msgs, 6) == [4, 5, 6, 7, 8, 9]
    assert window_ids(msgs, 3) == []
    r, e = _enc(tokenizer, [Query("Q?", "A", window=10_000)])
    read = e.reads[0]
    assert read.student[: read.student_start] == e.context + read.suffix[: read.suffix_start]
    assert read.windowed
    _, e = _enc(tokenizer, [Query("Q?", "A", window=3)])  # no whole message fits: memory-only after all
    assert not e.reads[0].windowed


def test_continuation_targets_the_next_message_as_a_reply_is_generated(tokenizer):
    nxt = {"role": "assistant", "name": "Bo", "timestamp": "2 May 2024", "content": "Same here, rain all day."}
    r, e = _enc(tokenizer, [Query(None, nxt)])
    read = e.reads[0]
    assert not read.answer
    # the prompt is the role's generation header, the target the bare content and the end of turn:
    # no timestamp or name, which a generated reply never starts with
    assert read.suffix[: read.suffix_start] == r.prompt([], None)[len(r.system_ids):]
    assert read.suffix[read.suffix_start:] == r.encode("Same here, rain all day.") + [2]
    user = {**nxt, "role": "user"}
    _, e = _enc(tokenizer, [Query(None, user)])
    header = e.reads[0].suffix[: e.reads[0].suffix_start]
    assert tokenizer.decode(header).strip().endswith("user")


def test_reads_that_do_not_fit_are_dropped(tokenizer):
    _, e = _enc(tokenizer, [Query("Q?", "word " * 300), Query("Q?", "A")])
    assert len(e.reads) == 1
    _, none = _enc(tokenizer, [Query("Q?", "word " * 300)])
    assert none is None


def test_history_keeps_its_last_messages_that_fit(tokenizer):
    r, e = _enc(tokenizer, [Query("Q?", "A")], max_write_tokens=40)
    kept = e.context[len(r.system_ids):]
    last = r.encode(r.message(HIST[-1]))
    assert kept[-len(last):] == last and len(kept) <= 40


def test_shared_prefix_teacher_equals_full_reads(tokenizer, tiny_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_dir).eval()
    nxt = {"role": "assistant", "name": "Bo", "content": "Same here."}
    _, e = _enc(tokenizer, [Query("Where?", "Tromso"), Query(None, nxt), Query("Who?", "Ana and Bo")])
    with torch.no_grad():
        full = target_pass(model, collate([(e.context + r.suffix, len(e.context) + r.suffix_start) for r in e.reads], 2))
        shared = teacher_pass(model, [e, e], 2)
    n = full.logits.shape[0]
    assert torch.equal(shared.targets[:n], full.targets) and torch.equal(shared.rows[:n], full.rows)
    torch.testing.assert_close(shared.logits[:n], full.logits, rtol=1e-4, atol=1e-4)
    assert torch.equal(shared.rows[n:], full.rows + 3)
