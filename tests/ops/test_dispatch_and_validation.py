"""Dispatch (`delta_rule`, `choose_impl`) and argument validation of the memory op."""

from __future__ import annotations

import math

import pytest
import torch

import deltamem.ops as ops
from deltamem.ops import IMPLS, choose_impl, delta_rule, delta_rule_chunked, delta_rule_naive, delta_rule_step

from test_delta_rule import FP32_VALUE_TOL, assert_close_rel, make_inputs


# --------------------------------------------------------------------------- dispatch


def test_choose_impl_reasons():
    assert choose_impl("naive", 10_000) == ("naive", "requested")
    assert choose_impl("chunked", 1) == ("chunked", "requested")
    for T in (0, 1, ops.NAIVE_MAX_T):
        name, reason = choose_impl("auto", T)
        assert name == "naive" and f"T={T}" in reason and "<=" in reason
    name, reason = choose_impl("auto", ops.NAIVE_MAX_T + 1)
    assert name == "chunked" and f"T={ops.NAIVE_MAX_T + 1}" in reason and "chunked" in reason
    assert set(IMPLS) == {"auto", "naive", "chunked"}
    with pytest.raises(ValueError, match=r"^impl must"):
        choose_impl("triton", 4)


@pytest.mark.parametrize(
    "impl, T, expect",
    [("naive", 40, "naive"), ("chunked", 3, "chunked"), ("auto", 3, "naive"), ("auto", 40, "chunked")],
)
def test_delta_rule_dispatch(monkeypatch, impl, T, expect):
    calls = []

    def spy(name, real):
        def wrapped(*args, **kwargs):
            calls.append((name, kwargs))
            return real(*args, **kwargs)

        return wrapped

    monkeypatch.setattr(ops, "delta_rule_naive", spy("naive", delta_rule_naive))
    monkeypatch.setattr(ops, "delta_rule_chunked", spy("chunked", delta_rule_chunked))
    q, k, v, beta, S0, mask = make_inputs(2, T, 2, 4, seed=15, init="sR", mask_kind="holes")
    write_mask = torch.arange(T).expand(2, T) % 3 != 1
    reads, state = ops.delta_rule(
        q, k, v, beta, initial_state=S0, mask=mask, mode="no_decay", impl=impl, chunk_size=5, write_mask=write_mask
    )
    assert [c[0] for c in calls] == [expect]
    kwargs = calls[0][1]
    assert kwargs["mode"] == "no_decay" and kwargs["mask"] is mask and kwargs["initial_state"] is S0
    assert kwargs["write_mask"] is write_mask
    if expect == "chunked":
        assert kwargs["chunk_size"] == 5
    want_reads, want_state = delta_rule_naive(
        q, k, v, beta, initial_state=S0, mask=mask, mode="no_decay", write_mask=write_mask
    )
    assert_close_rel("dispatched reads", reads, want_reads, FP32_VALUE_TOL)
    assert_close_rel("dispatched state", state, want_state, FP32_VALUE_TOL)


# --------------------------------------------------------------------------- bad inputs

B_, T_, H_, R_ = 2, 5, 3, 4


def _good():
    q, k, v, beta, S0, _ = make_inputs(B_, T_, H_, R_, seed=16, init="sR")
    return dict(q=q, k=k, v=v, beta=beta, initial_state=S0, mask=torch.ones(B_, T_, dtype=torch.bool))


SEQ_BAD = {
    "q-rank3": ("q", lambda a: a.update(q=a["q"][:, :, 0])),
    "q-not-tensor": ("q", lambda a: a.update(q=a["q"].tolist())),
    "k-rank5": ("k", lambda a: a.update(k=a["k"].unsqueeze(0))),
    "k-shape": ("k", lambda a: a.update(k=a["k"][:, :-1])),
    "v-shape": ("v", lambda a: a.update(v=a["v"][..., :-1])),
    "beta-shape": ("beta", lambda a: a.update(beta=a["beta"][:, :, :1])),
    "beta-rank3": ("beta", lambda a: a.update(beta=a["beta"][..., 0])),
    "beta-zero": ("beta", lambda a: a["beta"].__setitem__((0, 1, 0, 0), 0.0)),
    "beta-one": ("beta", lambda a: a["beta"].__setitem__((1, 4, 2, 3), 1.0)),
    "beta-negative": ("beta", lambda a: a["beta"].__setitem__((0, 0, 0, 0), -0.1)),
    "beta-above-one": ("beta", lambda a: a.update(beta=a["beta"] + 1.0)),
    "beta-nan": ("beta", lambda a: a["beta"].__setitem__((0, 2, 1, 1), float("nan"))),
    "mask-shape": ("mask", lambda a: a.update(mask=torch.ones(B_, T_ + 1, dtype=torch.bool))),
    "mask-rank1": ("mask", lambda a: a.update(mask=torch.ones(B_ * T_, dtype=torch.bool))),
    "mask-per-head": ("mask", lambda a: a.update(mask=torch.ones(B_, T_, H_, dtype=torch.bool))),
    "mask-float": ("mask", lambda a: a.update(mask=torch.ones(B_, T_))),
    "mask-int": ("mask", lambda a: a.update(mask=torch.ones(B_, T_, dtype=torch.long))),
    "state-shape": ("initial_state", lambda a: a.update(initial_state=a["initial_state"][..., :-1])),
    "state-rank3": ("initial_state", lambda a: a.update(initial_state=a["initial_state"][0])),
    "state-batch": ("initial_state", lambda a: a.update(initial_state=a["initial_state"][:1])),
    "write_mask-shape": ("write_mask", lambda a: a.update(write_mask=torch.ones(B_ + 1, T_, dtype=torch.bool))),
    "write_mask-float": ("write_mask", lambda a: a.update(write_mask=torch.ones(B_, T_))),
    "write_mask-list": ("write_mask", lambda a: a.update(write_mask=[[True] * T_] * B_)),
}


@pytest.mark.parametrize("fn", [delta_rule_naive, delta_rule_chunked, delta_rule], ids=["naive", "chunked", "dispatch"])
@pytest.mark.parametrize("bad", list(SEQ_BAD), ids=list(SEQ_BAD))
def test_bad_sequence_inputs_raise_naming_the_argument(fn, bad):
    arg, mutate = SEQ_BAD[bad]
    args = _good()
    mutate(args)
    with pytest.raises(ValueError, match=rf"^{arg} must"):
        fn(**args)


@pytest.mark.parametrize("fn", [delta_rule_naive, delta_rule_chunked, delta_rule], ids=["naive", "chunked", "dispatch"])
def test_unknown_mode_raises(fn):
    with pytest.raises(ValueError, match=r"^mode must.*'decay'"):
        fn(**_good(), mode="decay")


def test_unknown_impl_and_bad_chunk_size_raise():
    with pytest.raises(ValueError, match=r"^impl must.*'fast'"):
        delta_rule(**_good(), impl="fast")
    for C in (0, -3, 2.5):
        with pytest.raises(ValueError, match=r"^chunk_size must"):
            delta_rule_chunked(**_good(), chunk_size=C)


def _good_step():
    a = _good()
    return dict(q=a["q"][:, 0], k=a["k"][:, 0], v=a["v"][:, 0], beta=a["beta"][:, 0], state=a["initial_state"])


STEP_BAD = {
    "q-rank4": ("q", lambda a: a.update(q=a["q"].unsqueeze(1))),
    "k-shape": ("k", lambda a: a.update(k=a["k"][:, :-1])),
    "v-rank2": ("v", lambda a: a.update(v=a["v"][:, 0])),
    "beta-shape": ("beta", lambda a: a.update(beta=a["beta"][..., :2])),
    "beta-one": ("beta", lambda a: a["beta"].__setitem__((0, 0, 0), 1.0)),
    "beta-zero": ("beta", lambda a: a["beta"].__setitem__((1, 2, 3), 0.0)),
    "state-shape": ("state", lambda a: a.update(state=a["state"][..., :-1, :])),
    "state-missing-batch": ("state", lambda a: a.update(state=a["state"][0])),
    "state-none": ("state", lambda a: a.update(state=None)),
}


@pytest.mark.parametrize("bad", list(STEP_BAD), ids=list(STEP_BAD))
def test_bad_step_inputs_raise_naming_the_argument(bad):
    arg, mutate = STEP_BAD[bad]
    args = _good_step()
    mutate(args)
    with pytest.raises(ValueError, match=rf"^{arg} must"):
        delta_rule_step(**args)


def test_step_unknown_mode_raises():
    with pytest.raises(ValueError, match=r"^mode must"):
        delta_rule_step(**_good_step(), mode="Standard")


def test_good_inputs_do_not_raise():
    """The bad-input tests above only mean something if the unmodified inputs are accepted."""
    for fn in (delta_rule_naive, delta_rule_chunked, delta_rule):
        reads, state = fn(**_good())
        assert reads.shape == (B_, T_, H_, R_) and state.shape == (B_, H_, R_, R_)
    read, state = delta_rule_step(**_good_step())
    assert read.shape == (B_, H_, R_) and state.shape == (B_, H_, R_, R_)
    assert math.isfinite(float(state.abs().sum()))
