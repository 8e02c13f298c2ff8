"""Model-level invariants of an attached δ-mem adapter on tiny random backbones of every supported family.

Each invariant is its own test: a zero state gives the frozen backbone; writes
change later reads, reproducibly; the adapter computes DESIGN.md section 2
(checked against an independent reference); cached decoding equals one full
forward; split writes equal one write; read-only calls leave the state
bit-identical; batch rows and padding are independent; write masks.
"""

from __future__ import annotations

import pytest
import torch

import deltamem.adapter as dm
from adapter_helpers import (ARCHS, assert_states_close, assert_states_differ, attached, capture_attention_inputs,
                             max_diff, reference_project, reference_token_write, step, tiny_model, token_ids,
                             written_state)

FP32_TOL = 1e-5


def logits(model, ids, **kw):
    with torch.no_grad():
        return model(ids, **kw).logits


# --------------------------------------------------------------------------- zero state == backbone


@pytest.mark.parametrize("arch", ARCHS)
def test_zero_init_write_mode_is_exactly_the_backbone(arch):
    """init="zero": corrections are 0 whatever the state, so even while writing the logits are the backbone's."""
    ids = token_ids(2, 20)
    ref = logits(tiny_model(arch), ids)
    model = attached(arch, init="zero")
    outside = logits(model, ids)
    state = dm.MemoryState.zeros(model, batch_size=2)
    with torch.no_grad(), dm.use_memory(model, state, write=True):
        inside = model(ids).logits
    assert torch.equal(outside, ref)
    assert torch.equal(inside, ref)
    assert_states_differ(state, dm.MemoryState.zeros(model, batch_size=2))  # it did write


@pytest.mark.parametrize("arch", ARCHS)
def test_zero_state_read_only_base_slice_is_exactly_the_backbone(arch):
    ids = token_ids(2, 20)
    ref = logits(tiny_model(arch), ids)
    model = attached(arch, init="base_slice")
    state = dm.MemoryState.zeros(model, batch_size=2)
    with torch.no_grad(), dm.use_memory(model, state, write=False):
        inside = model(ids).logits
    assert torch.equal(inside, ref)


@pytest.mark.parametrize("init", ["zero", "base_slice"])
def test_zero_state_first_token_is_backbone_in_write_mode(init):
    """The first token reads the state before its own write: with a zero state its logits are the backbone's."""
    ids = token_ids(1, 12)
    ref = logits(tiny_model("llama"), ids)
    model = attached("llama", init=init)
    with torch.no_grad(), dm.use_memory(model, dm.MemoryState.zeros(model), write=True):
        out = model(ids).logits
    assert torch.equal(out[:, 0], ref[:, 0])
    if init == "base_slice":  # later tokens read what earlier ones wrote
        assert max_diff(out[:, 1:], ref[:, 1:]) > 1e-4


def test_base_slice_init_matches_design():
    """U starts as 0.05 x the first H r unit-normalised columns of the base projection, the rest zero."""
    model = attached("llama", rank=4, num_state_heads=2)
    layer = dm.get_delta_mem(model).layers["1"]
    attn = model.model.layers[1].self_attn
    for name, proj in (("q", attn.q_proj), ("o", attn.o_proj)):
        cols = proj.weight[:, :8]
        want = 0.05 * cols / cols.norm(dim=0, keepdim=True)
        assert torch.allclose(layer.U[name], want, atol=1e-7)
    assert torch.equal(layer.W[3 * 8:], torch.zeros(8, 64))  # W_b = 0
    zero = attached("llama", init="zero")
    assert all(float(U.detach().abs().max()) == 0 for lay in dm.get_delta_mem(zero).layers.values() for U in lay.U.values())


# --------------------------------------------------------------------------- writes and reads


@pytest.mark.parametrize("arch", ARCHS)
def test_written_memory_changes_reads_reproducibly(arch):
    model = attached(arch)
    state = written_state(model, B=1)
    query = token_ids(1, 10, seed=5)
    plain = logits(model, query)
    outs = []
    for _ in range(2):
        with torch.no_grad(), dm.use_memory(model, state, write=False):
            outs.append(model(query).logits)
    assert max_diff(outs[0], plain) > 1e-4, "a written memory has no effect on the logits"
    assert torch.equal(outs[0], outs[1])
    # writing the same history into a fresh state again gives the same state, bit for bit
    assert written_state(model, B=1).to_bytes() == state.to_bytes()


@pytest.mark.parametrize("arch", ARCHS)
def test_token_write_matches_reference_recurrence(arch):
    """Final state, reads and the q_proj/o_proj corrections follow DESIGN.md section 2 (sequential reference)."""
    model = attached(arch)
    dmem = dm.get_delta_mem(model)
    state = written_state(model, B=2, T=6)
    S0 = [t.clone() for t in state.tensors]
    ids = token_ids(2, 19, seed=9)
    q_out = {}
    handles = []
    for i, layer in enumerate(model.model.layers):  # registered after δ-mem's hooks: sees the corrected output
        handles.append(layer.self_attn.q_proj.register_forward_hook(lambda m, a, o, i=i: q_out.__setitem__(i, o)))
    try:
        with torch.no_grad(), capture_attention_inputs(model) as seen, dm.use_memory(model, state) as binding:
            model(ids)
    finally:
        for h in handles:
            h.remove()
    for slot, i in enumerate(dmem.layer_ids):
        layer = dmem.layers[str(i)]
        h = seen[i][0]
        reads, S = reference_token_write(layer, h, S0[slot])
        assert max_diff(state.tensors[slot], S) < FP32_TOL
        assert max_diff(binding.reads[i], reads.flatten(2)) < FP32_TOL
        base_q = torch.nn.functional.linear(h, model.model.layers[i].self_attn.q_proj.weight,
                                            model.model.layers[i].self_attn.q_proj.bias)
        want_q = base_q + (16.0 / 8) * reads.flatten(2) @ layer.U["q"].detach().T
        assert max_diff(q_out[i], want_q) < FP32_TOL


@pytest.mark.parametrize("arch", ARCHS)
def test_read_only_leaves_state_bit_identical(arch):
    model = attached(arch)
    state = written_state(model, B=2)
    before = state.to_bytes()
    tensors = [t.clone() for t in state.tensors]
    with torch.no_grad(), dm.use_memory(model, state, write=False):
        model(token_ids(2, 16, seed=3))
        model(token_ids(2, 5, seed=4))
    assert state.to_bytes() == before
    assert all(torch.equal(a, b) for a, b in zip(tensors, state.tensors))


# --------------------------------------------------------------------------- decoding


def _decode(model, state, ids, prefill: int, attention_mask=None):
    """Prefill `prefill` tokens, then feed the rest one at a time with the KV cache; return all logits."""
    steps = []
    with torch.no_grad(), dm.use_memory(model, state, write=True):
        am = None if attention_mask is None else attention_mask[:, :prefill]
        out = step(model, ids[:, :prefill], attention_mask=am)
        steps.append(out.logits)
        for t in range(prefill, ids.shape[1]):
            am = None if attention_mask is None else attention_mask[:, : t + 1]
            out = step(model, ids[:, t:t + 1], out, attention_mask=am)
            steps.append(out.logits)
    return torch.cat(steps, 1)


@pytest.mark.parametrize("arch", ARCHS)
def test_cached_decoding_equals_full_forward(arch):
    model = attached(arch)
    ids = token_ids(2, 24, seed=2)
    start = written_state(model, B=2, T=10)
    full_state = start.clone()
    with torch.no_grad(), dm.use_memory(model, full_state, write=True):
        full = model(ids).logits
    inc_state = start.clone()
    inc = _decode(model, inc_state, ids, prefill=7)
    assert max_diff(inc, full) < FP32_TOL
    assert_states_close(inc_state, full_state, FP32_TOL)
    assert_states_differ(full_state, start)


@pytest.mark.parametrize("heads", [1, 4])
def test_cached_decoding_equals_full_forward_no_decay(heads):
    model = attached("mistral", update_mode="no_decay", num_state_heads=heads)
    ids = token_ids(2, 18, seed=12)
    start = written_state(model, B=2, T=10)
    full_state = start.clone()
    with torch.no_grad(), dm.use_memory(model, full_state, write=True):
        full = model(ids).logits
    inc_state = start.clone()
    inc = _decode(model, inc_state, ids, prefill=4, attention_mask=torch.ones_like(ids))
    assert max_diff(inc, full) < FP32_TOL
    assert_states_close(inc_state, full_state, FP32_TOL)


def test_all_ones_attention_mask_changes_nothing():
    model = attached("llama")
    ids = token_ids(2, 12, seed=13)
    s1, s2 = written_state(model, B=2), written_state(model, B=2)
    with torch.no_grad(), dm.use_memory(model, s1):
        a = model(ids).logits
    with torch.no_grad(), dm.use_memory(model, s2):
        b = model(ids, attention_mask=torch.ones_like(ids)).logits
    assert torch.equal(a, b) and s1.to_bytes() == s2.to_bytes()


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_generate_under_use_memory(arch):
    """`generate` writes every token it feeds (the prompt and all but the last new token), like one forward."""
    model = attached(arch)
    prompt = token_ids(1, 9, seed=6)
    state = written_state(model, B=1, T=8)
    start = state.clone()
    with torch.no_grad(), dm.use_memory(model, state, write=True):
        gen = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=6, min_new_tokens=6,
                             do_sample=False, pad_token_id=0, output_logits=True, return_dict_in_generate=True)
    seq = gen.sequences
    assert seq.shape == (1, 15)
    replay = start.clone()
    with torch.no_grad(), dm.use_memory(model, replay, write=True):
        full = model(seq[:, :-1]).logits
    assert_states_close(state, replay, FP32_TOL)
    scores = torch.stack(gen.logits, 1)  # [1, 6, V]: the raw logits each new token was chosen from
    assert max_diff(scores, full[:, 8:]) < FP32_TOL
    assert torch.equal(seq[:, 9:], full[:, 8:].argmax(-1))
    # reading the memory changes what is generated from the backbone's, at least in its scores
    with torch.no_grad():
        plain = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=1, do_sample=False,
                               pad_token_id=0, output_logits=True, return_dict_in_generate=True)
    assert max_diff(plain.logits[0], gen.logits[0]) > 1e-4


@pytest.mark.parametrize("same_block", [True, False], ids=["one-block", "two-blocks"])
@pytest.mark.parametrize("arch", ["llama", "qwen2", "smollm3"])
def test_split_write_equals_one_write(arch, same_block):
    model = attached(arch)
    ids = token_ids(2, 21, seed=8)
    one = dm.MemoryState.zeros(model, batch_size=2)
    with torch.no_grad(), dm.use_memory(model, one):
        model(ids)
    two = dm.MemoryState.zeros(model, batch_size=2)
    with torch.no_grad():
        with dm.use_memory(model, two):
            out = step(model, ids[:, :11])
            if same_block:
                step(model, ids[:, 11:], out)
        if not same_block:
            with dm.use_memory(model, two):
                step(model, ids[:, 11:], out)
    assert_states_close(two, one, FP32_TOL)
    query = token_ids(2, 7, seed=11)
    with torch.no_grad(), dm.use_memory(model, one, write=False):
        l1 = model(query).logits
    with torch.no_grad(), dm.use_memory(model, two, write=False):
        l2 = model(query).logits
    assert max_diff(l1, l2) < FP32_TOL


# --------------------------------------------------------------------------- batching and padding


def _left_pad(seqs, pad_id=0):
    T = max(s.shape[0] for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros(len(seqs), T, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, T - len(s):] = s
        mask[i, T - len(s):] = 1
    return ids, mask


@pytest.mark.parametrize("arch", ARCHS)
def test_batch_rows_use_their_own_state_and_padding_changes_nothing(arch):
    model = attached(arch)
    seqs = [token_ids(1, 13, seed=20)[0], token_ids(1, 8, seed=21)[0], token_ids(1, 11, seed=22)[0]]
    starts = written_state(model, B=3, T=12)  # a different memory in every row
    ids, mask = _left_pad(seqs)
    pos = (mask.cumsum(-1) - 1).clamp_min(0)
    batch = starts.clone()
    with torch.no_grad(), dm.use_memory(model, batch) as binding:
        out = model(ids, attention_mask=mask, position_ids=pos).logits
    T = ids.shape[1]
    for row, seq in enumerate(seqs):
        alone = starts.rows(row)
        with torch.no_grad(), dm.use_memory(model, alone):
            ref = model(seq[None]).logits
        assert_states_close(batch.rows(row), alone, 1e-6)
        assert max_diff(out[row, T - len(seq):], ref[0]) < FP32_TOL
        for i, m in binding.reads.items():  # padded tokens read nothing
            assert torch.equal(m[row, : T - len(seq)], torch.zeros_like(m[row, : T - len(seq)]))
    # the rows really depend on their own memory: swapping two rows' memories changes their logits
    swapped = dm.MemoryState.cat([starts.rows(1), starts.rows(0), starts.rows(2)])
    with torch.no_grad(), dm.use_memory(model, swapped):
        out2 = model(ids, attention_mask=mask, position_ids=pos).logits
    assert max_diff(out2[0, T - 13:], out[0, T - 13:]) > 1e-4
    assert max_diff(out2[2], out[2]) < FP32_TOL


def test_padded_batch_decoding_matches_rows_alone():
    """Left-padded prefill then cached decode steps: each row equals its own unpadded decode."""
    model = attached("llama")
    seqs = [token_ids(1, 9, seed=30)[0], token_ids(1, 5, seed=31)[0]]
    ids, mask = _left_pad(seqs)
    extra = token_ids(2, 4, seed=32)
    ids, mask = torch.cat([ids, extra], 1), torch.cat([mask, torch.ones_like(extra)], 1)
    starts = written_state(model, B=2)
    batch = starts.clone()
    steps = []
    with torch.no_grad(), dm.use_memory(model, batch):
        P = 9
        pos = (mask.cumsum(-1) - 1).clamp_min(0)
        out = step(model, ids[:, :P], attention_mask=mask[:, :P], position_ids=pos[:, :P])
        steps.append(out.logits)
        for t in range(P, ids.shape[1]):
            out = step(model, ids[:, t:t + 1], out, attention_mask=mask[:, :t + 1], position_ids=pos[:, t:t + 1])
            steps.append(out.logits)
    got = torch.cat(steps, 1)
    for row, seq in enumerate(seqs):
        alone = starts.rows(row)
        full = torch.cat([seq, extra[row]])[None]
        with torch.no_grad(), dm.use_memory(model, alone):
            ref = model(full).logits
        assert_states_close(batch.rows(row), alone, FP32_TOL)
        assert max_diff(got[row, -full.shape[1]:], ref[0]) < FP32_TOL


def test_masked_single_token_neither_reads_nor_writes():
    """A decode step whose token is masked out (attention_mask 0 in the last column) leaves that row's state."""
    model = attached("llama")
    state = written_state(model, B=2)
    before = state.clone()
    ids = token_ids(2, 1, seed=40)
    with torch.no_grad(), dm.use_memory(model, state) as binding:
        model(ids, attention_mask=torch.tensor([[1], [0]]))
    assert torch.equal(torch.cat([t[1:] for t in state.tensors]), torch.cat([t[1:] for t in before.tensors]))
    assert_states_differ(state.rows(0), before.rows(0))
    assert all(float(m[1].abs().max()) == 0 and float(m[0].abs().max()) > 0 for m in binding.reads.values())


# --------------------------------------------------------------------------- write masks


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen3"])
def test_read_only_tail_writes_nothing(arch):
    """Writing [A, B] with B read-only gives the state of writing A alone; B's tokens still read the memory."""
    model = attached(arch)
    A, Bt = token_ids(2, 10, seed=50), token_ids(2, 6, seed=51)
    ids = torch.cat([A, Bt], 1)
    wm = torch.cat([torch.ones_like(A, dtype=torch.bool), torch.zeros_like(Bt, dtype=torch.bool)], 1)
    start = written_state(model, B=2)
    masked = start.clone()
    with torch.no_grad(), dm.use_memory(model, masked, write_mask=wm) as binding:
        model(ids)
    alone = start.clone()
    with torch.no_grad(), dm.use_memory(model, alone):
        model(A)
    assert_states_close(masked, alone, 1e-6)
    assert all(float(m[:, 10:].abs().min()) > 0 for m in binding.reads.values())
    everything = start.clone()
    with torch.no_grad(), dm.use_memory(model, everything):
        model(ids)
    assert_states_differ(everything, masked)


def test_read_only_tokens_in_the_middle_match_reference():
    model = attached("llama")
    dmem = dm.get_delta_mem(model)
    ids = token_ids(2, 18, seed=52)
    wm = torch.ones(2, 18, dtype=torch.bool)
    wm[0, 4:9] = False
    wm[1, :3] = False
    wm[1, 15:] = False
    state = written_state(model, B=2)
    S0 = [t.clone() for t in state.tensors]
    with torch.no_grad(), capture_attention_inputs(model) as seen, dm.use_memory(model, state, write_mask=wm):
        model(ids)
    for slot, i in enumerate(dmem.layer_ids):
        _, S = reference_token_write(dmem.layers[str(i)], seen[i][0], S0[slot], write_mask=wm)
        assert max_diff(state.tensors[slot], S) < FP32_TOL


def test_write_mask_applies_to_first_call_only():
    """Later calls of the block (decode steps) write every token."""
    model = attached("llama")
    ids = token_ids(1, 8, seed=53)
    state = dm.MemoryState.zeros(model)
    with torch.no_grad(), dm.use_memory(model, state, write_mask=torch.zeros(1, 8, dtype=torch.bool)):
        out = step(model, ids)
        assert all(float(t.abs().max()) == 0 for t in state.tensors)
        step(model, token_ids(1, 1, seed=54), out)
    assert all(float(t.abs().max()) > 0 for t in state.tensors)


# --------------------------------------------------------------------------- variants


@pytest.mark.parametrize("arch", ["llama", "qwen3", "smollm3"])
def test_multi_state_heads(arch):
    model = attached(arch, num_state_heads=4)
    ids = token_ids(2, 20, seed=60)
    state = dm.MemoryState.zeros(model, batch_size=2)
    assert all(t.shape == (2, 4, 8, 8) for t in state.tensors)
    assert state.nbytes == 2 * 2 * 4 * 64 * 4
    with torch.no_grad(), capture_attention_inputs(model) as seen, dm.use_memory(model, state):
        full = model(ids).logits
    dmem = dm.get_delta_mem(model)
    for slot, i in enumerate(dmem.layer_ids):
        _, S = reference_token_write(dmem.layers[str(i)], seen[i][0], torch.zeros(2, 4, 8, 8))
        assert max_diff(state.tensors[slot], S) < FP32_TOL
    inc_state = dm.MemoryState.zeros(model, batch_size=2)
    inc = _decode(model, inc_state, ids, prefill=5)
    assert max_diff(inc, full) < FP32_TOL
    assert_states_close(inc_state, state, FP32_TOL)


def test_gate_bias_init_is_honoured():
    for bias in (-1.5, -4.0, 2.0):
        model = attached("llama", gate_bias_init=bias)
        for layer in dm.get_delta_mem(model).layers.values():
            assert torch.equal(layer.c_b.detach(), torch.full((8,), bias))
        state = dm.MemoryState.zeros(model)
        with torch.no_grad(), dm.use_memory(model, state, collect_gates=True) as binding:
            model(token_ids(1, 12, seed=61))
        want = torch.sigmoid(torch.tensor(bias)).item()  # W_b = 0 at init: every gate is sigmoid(c_b)
        assert abs(binding.gate_mean().item() - want) < 1e-6


def test_gate_bias_changes_what_is_kept():
    """A lower gate bias writes less: the state after the same history is smaller."""
    sizes = []
    for bias in (-1.5, -6.0):
        model = attached("llama", gate_bias_init=bias)
        state = written_state(model)
        sizes.append(sum(float(t.norm()) for t in state.tensors))
    assert sizes[1] < 0.1 * sizes[0]


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_no_decay_update_mode(arch):
    standard = attached(arch, update_mode="standard")
    plain = attached(arch, update_mode="no_decay")
    plain.delta_mem.layers.load_state_dict(standard.delta_mem.layers.state_dict())
    ids = token_ids(1, 20, seed=62)
    s_std, s_nd = dm.MemoryState.zeros(standard), dm.MemoryState.zeros(plain)
    with torch.no_grad(), dm.use_memory(standard, s_std):
        standard(ids)
    with torch.no_grad(), capture_attention_inputs(plain) as seen, dm.use_memory(plain, s_nd):
        plain(ids)
    assert_states_differ(s_std, s_nd)
    dmem = dm.get_delta_mem(plain)
    for slot, i in enumerate(dmem.layer_ids):
        _, S = reference_token_write(dmem.layers[str(i)], seen[i][0], torch.zeros(1, 1, 8, 8))
        assert max_diff(s_nd.tensors[slot], S) < FP32_TOL


def test_target_layers_only_equip_those_layers():
    model = attached("llama", target_layers=[1])
    assert dm.get_delta_mem(model).layer_ids == (1,)
    state = written_state(model)
    assert state.layers == (1,) and len(state.tensors) == 1
    ids = token_ids(1, 6, seed=63)
    with torch.no_grad(), capture_attention_inputs(model) as seen, dm.use_memory(model, state, write=False):
        out = model(ids).logits
    ref_model = tiny_model("llama")
    with torch.no_grad(), capture_attention_inputs(ref_model) as seen_ref:
        ref = ref_model(ids).logits
    # layer 0 has no memory, so both attention blocks see the backbone's inputs; layer 1's corrections move the logits
    assert torch.equal(seen[0][0], seen_ref[0][0]) and torch.equal(seen[1][0], seen_ref[1][0])
    assert max_diff(out, ref) > 1e-4


def test_read_only_padding_reads_nothing_and_rows_match_alone():
    model = attached("qwen2")
    seqs = [token_ids(1, 10, seed=64)[0], token_ids(1, 6, seed=65)[0]]
    ids, mask = _left_pad(seqs)
    pos = (mask.cumsum(-1) - 1).clamp_min(0)
    state = written_state(model, B=2)
    before = state.to_bytes()
    with torch.no_grad(), dm.use_memory(model, state, write=False) as binding:
        out = model(ids, attention_mask=mask, position_ids=pos).logits
    assert state.to_bytes() == before
    for m in binding.reads.values():
        assert float(m[1, :4].abs().max()) == 0 and float(m[1, 4:].abs().min()) > 0
    for row, seq in enumerate(seqs):
        with torch.no_grad(), dm.use_memory(model, state.rows(row), write=False):
            ref = model(seq[None]).logits
        assert max_diff(out[row, -len(seq):], ref[0]) < FP32_TOL


# --------------------------------------------------------------------------- how the memory is bound


def test_inputs_embeds_work_like_input_ids():
    model = attached("llama")
    ids = token_ids(2, 10, seed=66)
    s1, s2 = written_state(model, B=2), written_state(model, B=2)
    with torch.no_grad(), dm.use_memory(model, s1):
        a = model(ids).logits
    with torch.no_grad(), dm.use_memory(model, s2):
        b = model(inputs_embeds=model.get_input_embeddings()(ids)).logits
    assert torch.equal(a, b)
    assert s1.to_bytes() == s2.to_bytes()


def test_two_models_bind_independently():
    """Nested blocks for two models: each call uses its own model's binding and state."""
    m1, m2 = attached("llama"), attached("llama", adapter_seed=5)
    ids = token_ids(1, 8, seed=67)
    a, b = dm.MemoryState.zeros(m1), dm.MemoryState.zeros(m2)
    with torch.no_grad(), dm.use_memory(m1, a), dm.use_memory(m2, b):
        m1(ids)
    assert float(b.tensors[0].abs().max()) == 0 and float(a.tensors[0].abs().max()) > 0
    ref = dm.MemoryState.zeros(m1)
    with torch.no_grad(), dm.use_memory(m1, ref):
        m1(ids)
    assert ref.to_bytes() == a.to_bytes()


def test_binding_is_not_seen_by_other_threads():
    import threading

    model = attached("llama")
    ids = token_ids(1, 8, seed=68)
    plain = logits(model, ids)
    state = written_state(model)
    before = state.to_bytes()
    seen = {}
    with torch.no_grad(), dm.use_memory(model, state):
        t = threading.Thread(target=lambda: seen.setdefault("out", logits(model, ids)))
        t.start()
        t.join()
    assert torch.equal(seen["out"], plain)
    assert state.to_bytes() == before  # the other thread's call did not write


def test_bf16_backbone_keeps_a_float32_state():
    ref_model = tiny_model("llama").to(torch.bfloat16)
    model = dm.attach_delta_mem(tiny_model("llama").to(torch.bfloat16))
    ids = token_ids(1, 16, seed=69)
    state = dm.MemoryState.zeros(model)
    with torch.no_grad(), dm.use_memory(model, state, write=False):
        out = model(ids).logits
    assert torch.equal(out, logits(ref_model, ids))
    with torch.no_grad(), dm.use_memory(model, state):
        full = model(ids).logits
    assert all(t.dtype == torch.float32 and bool(torch.isfinite(t).all()) for t in state.tensors)
    assert all(float(t.abs().max()) > 0 for t in state.tensors)
    inc_state = dm.MemoryState.zeros(model)
    inc = _decode(model, inc_state, ids, prefill=6)
    assert max_diff(inc, full) < 2e-2  # bf16 activations: a few bf16 ulps of logits ~0.5
    assert_states_close(inc_state, state, 5e-3)


@pytest.mark.parametrize("heads", [1, 4])
def test_read_only_reads_match_reference(heads):
    """Read-only: every token reads `m_t = S q_t` from the fixed state, per state head."""
    model = attached("qwen3", num_state_heads=heads)
    dmem = dm.get_delta_mem(model)
    state = written_state(model, B=2)
    with torch.no_grad(), capture_attention_inputs(model) as seen, dm.use_memory(model, state, write=False) as b:
        model(token_ids(2, 9, seed=14))
    for slot, i in enumerate(dmem.layer_ids):
        q = reference_project(dmem.layers[str(i)], seen[i][0])[0]  # [B, T, H, r]
        want = torch.einsum("bhij,bthj->bthi", state.tensors[slot], q).flatten(2)
        assert max_diff(b.reads[i], want) < FP32_TOL
