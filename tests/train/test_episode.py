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


def test_a_history_longer_than_the_gradient_pass_is_written_first_in_prefix_passes(tokenizer):
    r, e = _enc(tokenizer, [Query("Q?", "A")], max_write_tokens=40, max_history_tokens=10_000)
    msgs = [r.encode(r.message(m)) for m in HIST]
    assert e.context == r.system_ids + [t for m in msgs for t in m]  # the teacher reads all of it
    assert e.prefix and sum(p.new_tokens for p in e.prefix) + e.write.new_tokens == sum(map(len, msgs))
    assert e.write.new_tokens <= 40 and all(p.new_tokens <= 40 for p in e.prefix)
    # the passes are a session's: the prefix first, then the last messages after their read-only context
    cut = len(HIST) - e.write.messages
    prefix, _ = plan_writes(r, [], HIST[:cut], segment_tokens=40, context_tokens=0, granularity="token")
    last, _ = plan_writes(r, [t for m in msgs[:cut] for t in m], HIST[cut:], segment_tokens=40, context_tokens=128,
                          granularity="token")
    assert [p.input_ids.tolist() for p in e.prefix] == [p.input_ids.tolist() for p in prefix]
    assert torch.equal(e.write.input_ids, last[0].input_ids) and torch.equal(e.write.write_mask, last[0].write_mask)
    _, short = _enc(tokenizer, [Query("Q?", "A")], max_write_tokens=40)  # without it: the last messages only
    assert not short.prefix and len(short.context) < len(e.context)


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


def test_grouped_pass_equals_one_pass_over_every_row(tokenizer, tiny_dir):
    from transformers import AutoModelForCausalLM

    from deltamem.adapter import DeltaMemConfig, MemoryState, attach_delta_mem
    from deltamem.train.episode import grouped_pass

    model = AutoModelForCausalLM.from_pretrained(tiny_dir).eval()
    torch.manual_seed(0)
    attach_delta_mem(model, DeltaMemConfig())
    state = MemoryState.zeros(model, batch_size=3)
    for t in state.tensors:
        t.normal_()
    _, e = _enc(tokenizer, [Query("Where?", "Tromso"), Query("Who?", "Ana and Bo", window=10_000),
                            Query("When?", "in May 2024")])
    rows = [(r.student, r.student_start) for r in e.reads]
    with torch.no_grad():
        one = target_pass(model, collate(rows, 2), state)
        grouped = grouped_pass(model, rows, [[0, 2], [1]], state, 2)
        part = grouped_pass(model, rows, [[2]], state, 2)
    assert torch.equal(grouped.rows, one.rows) and torch.equal(grouped.targets, one.targets)
    torch.testing.assert_close(grouped.logits, one.logits, rtol=1e-4, atol=1e-4)
    keep = one.rows == 2  # a group of some rows: those rows' positions, in place, over all rows
    assert part.batch_size == 3 and torch.equal(part.rows, one.rows[keep])
    torch.testing.assert_close(part.logits, one.logits[keep], rtol=1e-4, atol=1e-4)
