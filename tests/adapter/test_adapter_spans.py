"""Span writes (SSW, write_granularity "message"/"sentence"): one write per span from its mean hidden state,
causal at span level (DESIGN.md section 3)."""

from __future__ import annotations

import pytest
import torch

import deltamem.adapter as dm
from adapter_helpers import (assert_states_close, attached, capture_attention_inputs, max_diff, reference_project,
                             step, token_ids, written_state)
from deltamem.ops import delta_rule_naive

FP32_TOL = 1e-5


def spans(*runs: tuple[int, int]) -> torch.Tensor:
    """`spans((0, 3), (1, 2))` -> `[0, 0, 0, 1, 1]` as a `[1, T]` long tensor."""
    return torch.tensor([[sid for sid, n in runs for _ in range(n)]])


def reference_span_write(layer, h, S0, span_ids, valid=None):
    """Sequential SSW reference for one layer: returns `(reads [B, T, H r], final state)`.

    Each contiguous run of equal non-negative ids (over valid tokens) is a span; its tokens read the state
    before the span's write; the span writes once from the mean of its hidden states.
    """
    B, T, _ = h.shape
    q = reference_project(layer, h)[0]  # [B, T, H, r]
    reads = torch.zeros(B, T, *q.shape[2:])
    finals = []
    for b in range(B):
        S = S0[b:b + 1].clone()
        ok = [bool(span_ids[b, t] >= 0) and (valid is None or bool(valid[b, t])) for t in range(T)]
        t = 0
        while t < T:
            if valid is not None and not valid[b, t]:
                t += 1
                continue
            if not ok[t]:
                reads[b, t] = (S[0] @ q[b, t].unsqueeze(-1)).squeeze(-1)
                t += 1
                continue
            end = t
            while end + 1 < T and ok[end + 1] and span_ids[b, end + 1] == span_ids[b, t]:
                end += 1
            for u in range(t, end + 1):
                reads[b, u] = (S[0] @ q[b, u].unsqueeze(-1)).squeeze(-1)
            mean = h[b:b + 1, t:end + 1].mean(1, keepdim=True)  # [1, 1, d]
            _, k, v, beta = reference_project(layer, mean)
            _, S = delta_rule_naive(k, k, v, beta, initial_state=S, mode=layer.config.update_mode)
            t = end + 1
        finals.append(S)
    return reads.flatten(2), torch.cat(finals)


@pytest.mark.parametrize("granularity", ["message", "sentence"])
@pytest.mark.parametrize("arch", ["llama", "qwen3", "smollm3"])
def test_span_write_matches_reference(arch, granularity):
    model = attached(arch, write_granularity=granularity)
    dmem = dm.get_delta_mem(model)
    ids = token_ids(2, 14, seed=70)
    span_ids = torch.tensor([[-1, -1, 0, 0, 0, 1, 1, 1, 1, 2, 2, 0, 0, -1],
                             [3, 3, 3, 3, 3, 3, 7, 7, -1, -1, -1, 7, 7, 7]])
    start = written_state(attached(arch), B=2)  # any non-zero memory of the right shape
    start.fingerprint = None
    state = start.clone()
    with torch.no_grad(), capture_attention_inputs(model) as seen, dm.use_memory(model, state,
                                                                                   span_ids=span_ids) as binding:
        model(ids)
    for slot, i in enumerate(dmem.layer_ids):
        reads, S = reference_span_write(dmem.layers[str(i)], seen[i][0], start.tensors[slot], span_ids)
        assert max_diff(state.tensors[slot], S) < FP32_TOL
        assert max_diff(binding.reads[i], reads) < FP32_TOL


def test_span_write_from_token_ids_int32_and_padding():
    """Left padding: a padded row equals the same row run alone; int32 span ids are accepted."""
    model = attached("llama", write_granularity="message")
    a, b = token_ids(1, 10, seed=71), token_ids(1, 6, seed=72)
    span_a = spans((0, 4), (1, 6))
    span_b = spans((0, 2), (1, 4))
    ids = torch.cat([a, torch.cat([torch.zeros(1, 4, dtype=torch.long), b], 1)])
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[1, :4] = 0
    span_ids = torch.cat([span_a, torch.cat([torch.zeros(1, 4, dtype=torch.long), span_b], 1)]).int()  # pads: id 0 too
    pos = (mask.cumsum(-1) - 1).clamp_min(0)
    starts = written_state(attached("llama"), B=2)
    starts.fingerprint = None
    batch = starts.clone()
    with torch.no_grad(), dm.use_memory(model, batch, span_ids=span_ids) as binding:
        out = model(ids, attention_mask=mask, position_ids=pos).logits
    assert all(float(m[1, :4].abs().max()) == 0 for m in binding.reads.values())
    for row, (seq, sp, T) in enumerate(((a, span_a, 10), (b, span_b, 6))):
        alone = starts.rows(row)
        with torch.no_grad(), dm.use_memory(model, alone, span_ids=sp):
            ref = model(seq).logits
        assert_states_close(batch.rows(row), alone, 1e-6)
        assert max_diff(out[row, -T:], ref[0]) < FP32_TOL


def test_span_writes_split_across_calls_equal_one_call():
    """Spans [0,0,0,1,1] in one call == [0,0,0] then [1,1] in two use_memory blocks sharing the KV cache."""
    model = attached("llama", write_granularity="message")
    ids = token_ids(1, 5, seed=73)
    one = dm.MemoryState.zeros(model)
    with torch.no_grad(), dm.use_memory(model, one, span_ids=spans((0, 3), (1, 2))):
        full = model(ids).logits
    two = dm.MemoryState.zeros(model)
    with torch.no_grad():
        with dm.use_memory(model, two, span_ids=spans((0, 3))):
            out = step(model, ids[:, :3])
        first = two.clone()
        with dm.use_memory(model, two, span_ids=spans((1, 2))):
            out2 = step(model, ids[:, 3:], out)
    assert_states_close(two, one, FP32_TOL)
    assert max_diff(torch.cat([out.logits, out2.logits], 1), full) < FP32_TOL
    assert max_diff(first.tensors[0], two.tensors[0]) > 1e-4  # the second call did write


def test_first_span_reads_the_state_before_its_own_write():
    """Tokens of span 0 read the initial state: their logits equal a read-only call; span 1's tokens differ."""
    model = attached("llama", write_granularity="message")
    ids = token_ids(1, 9, seed=74)
    memory = written_state(attached("llama"))
    for start in (dm.MemoryState.zeros(model), memory):
        state = start.clone()
        with torch.no_grad(), dm.use_memory(model, state, span_ids=spans((0, 5), (1, 4))):
            written = model(ids).logits
        with torch.no_grad(), dm.use_memory(model, start.clone(), write=False):
            read = model(ids).logits
        assert max_diff(written[:, :5], read[:, :5]) < FP32_TOL
        assert max_diff(written[:, 5:], read[:, 5:]) > 1e-4


def test_tokens_outside_spans_do_not_write():
    model = attached("llama", write_granularity="message")
    state = written_state(attached("llama"))
    state.fingerprint = None
    before = state.to_bytes()
    with torch.no_grad(), dm.use_memory(model, state, span_ids=torch.full((1, 8), -1)) as binding:
        model(token_ids(1, 8, seed=75))
    assert state.to_bytes() == before
    assert all(float(m.abs().min()) > 0 for m in binding.reads.values())  # they still read


def test_span_write_mask_acts_like_span_id_minus_one():
    """A read-only token (write_mask False) leaves its span like id -1 would: it reads, adds nothing to a mean,
    and splits the run it interrupts."""
    model = attached("llama", write_granularity="message")
    dmem = dm.get_delta_mem(model)
    ids = token_ids(1, 8, seed=76)
    wm = torch.tensor([[True, True, False, True, True, True, True, False]])
    marked = torch.tensor([[0, 0, -1, 0, 1, 1, 1, -1]])
    s1, s2 = dm.MemoryState.zeros(model), dm.MemoryState.zeros(model)
    with torch.no_grad(), capture_attention_inputs(model) as seen, dm.use_memory(
            model, s1, span_ids=spans((0, 4), (1, 4)), write_mask=wm) as binding:
        model(ids)
    with torch.no_grad(), dm.use_memory(model, s2, span_ids=marked):
        model(ids)
    assert_states_close(s1, s2, 1e-6)
    for slot, i in enumerate(dmem.layer_ids):
        reads, S = reference_span_write(dmem.layers[str(i)], seen[i][0], torch.zeros(1, 1, 8, 8), marked)
        assert max_diff(s1.tensors[slot], S) < FP32_TOL
        assert max_diff(binding.reads[i], reads) < FP32_TOL
    everything = dm.MemoryState.zeros(model)
    with torch.no_grad(), dm.use_memory(model, everything, span_ids=spans((0, 4), (1, 4))):
        model(ids)
    assert max(max_diff(x, y) for x, y in zip(s1.tensors, everything.tensors)) > 1e-4


def test_span_mode_needs_span_ids_to_write():
    model = attached("llama", write_granularity="message")
    state = dm.MemoryState.zeros(model)
    with pytest.raises(ValueError, match="span_ids"), torch.no_grad(), dm.use_memory(model, state):
        model(token_ids(1, 6))
    # read-only calls need none, and later calls of a block cannot write without their own span ids
    with torch.no_grad(), dm.use_memory(model, state, write=False):
        model(token_ids(1, 6))
    with pytest.raises(ValueError, match="span_ids"), torch.no_grad(), dm.use_memory(
            model, state, span_ids=spans((0, 6))):
        out = step(model, token_ids(1, 6))
        step(model, token_ids(1, 1, seed=3), out)


def test_span_ids_shape_and_dtype_are_checked():
    model = attached("llama", write_granularity="message")
    state = dm.MemoryState.zeros(model)
    with pytest.raises(ValueError, match="span_ids"), torch.no_grad(), dm.use_memory(
            model, state, span_ids=spans((0, 5))):
        model(token_ids(1, 6))
    with pytest.raises(ValueError, match="span_ids"):
        with dm.use_memory(model, state, span_ids=torch.zeros(1, 6)):
            pass


def test_span_gates_are_collected():
    model = attached("llama", write_granularity="message", gate_bias_init=-2.0)
    with torch.no_grad(), dm.use_memory(model, dm.MemoryState.zeros(model), span_ids=spans((0, 3), (1, 3)),
                                        collect_gates=True) as binding:
        model(token_ids(1, 6))
    assert abs(binding.gate_mean().item() - torch.sigmoid(torch.tensor(-2.0)).item()) < 1e-6
