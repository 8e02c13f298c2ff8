"""Tests for the δ-mem memory op (`deltamem.ops`).

The three implementations (sequential `delta_rule_naive`, parallel
`delta_rule_chunked`, one-token `delta_rule_step` run in a loop) must agree on
reads, final state and the gradients of every input, across a covering design
of shapes, masks, initial states, dtypes and modes. Every comparison goes
through `assert_close_rel`, which reports the relative error it found.
"""

from __future__ import annotations

import collections
import itertools
import zlib
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F

from deltamem.ops import (
    delta_rule,
    delta_rule_chunked,
    delta_rule_naive,
    delta_rule_step,
)

MODES = ("standard", "no_decay")

# Tolerances: relative error = max|got - want| / max|want| (see `assert_close_rel`).
FP32_VALUE_TOL = 1e-5
FP32_GRAD_TOL = 1e-4
BF16_VALUE_TOL = 1e-2  # reads are rounded to bf16 (8-bit mantissa: 2^-8 ~ 4e-3 per element)
BF16_GRAD_TOL = 1e-2  # input gradients come back in bf16 as well


# --------------------------------------------------------------------------- threads


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    """Run this module on one intra-op thread, restoring the setting afterwards.

    The tensors here are tiny; on a 2-core box shared with other work, OpenMP
    parallel regions in the batched triangular solve then wait on a busy core and
    a 1 s case can take 10-25 s. One thread keeps the timings stable.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --------------------------------------------------------------------------- helpers


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    """max|got - want| / max|want| in float64 (absolute error when `want` is all zeros)."""
    got, want = got.detach().double(), want.detach().double()
    scale = want.abs().max().item() if want.numel() else 0.0
    diff = (got - want).abs().max().item() if want.numel() else 0.0
    return diff / scale if scale > 0 else diff


def assert_close_rel(name: str, got: torch.Tensor, want: torch.Tensor, tol: float) -> None:
    """The one comparison used by these tests: same shape, no NaN/inf, relative error <= tol."""
    assert tuple(got.shape) == tuple(want.shape), f"{name}: shape {tuple(got.shape)} != expected {tuple(want.shape)}"
    assert torch.isfinite(got.detach().float()).all(), f"{name}: non-finite values in result"
    err = rel_err(got, want)
    assert err <= tol, f"{name}: relative error {err:.3e} > tol {tol:.1e} (max|want| = {want.detach().abs().max().item():.3e})"


def make_inputs(B, T, H, r, *, dtype=torch.float32, seed=0, init="sR", mask_kind="nomask"):
    """Random op inputs: L2-normalised q, k; v ~ N(0, 1); beta in (0.02, 0.98); float32 state."""
    g = torch.Generator().manual_seed(seed)
    q = F.normalize(torch.randn(B, T, H, r, generator=g), dim=-1).to(dtype)
    k = F.normalize(torch.randn(B, T, H, r, generator=g), dim=-1).to(dtype)
    v = torch.randn(B, T, H, r, generator=g).to(dtype)
    beta = (0.02 + 0.96 * torch.rand(B, T, H, r, generator=g)).to(dtype)
    if init == "s0":
        S0 = torch.zeros(B, H, r, r)
    else:
        S0 = 0.5 * torch.randn(B, H, r, r, generator=g)
    return q, k, v, beta, S0, make_mask(B, T, mask_kind, g)


def make_mask(B, T, kind, g):
    if kind == "nomask":
        return None
    if kind == "holes":  # random holes anywhere, about 30 %
        return torch.rand(B, T, generator=g) > 0.3
    if kind == "leftpad":  # each row: a left-padded run of 1..T-1 masked tokens, then valid ones
        mask = torch.zeros(B, T, dtype=torch.bool)
        for b in range(B):
            pad = int(torch.randint(1, T, (1,), generator=g)) if T > 1 else 0
            mask[b, pad:] = True
        return mask
    raise AssertionError(kind)


def run_steps(q, k, v, beta, S0, mask=None, mode="standard", write_mask=None):
    """`delta_rule_step` applied token by token.

    Masked tokens are skipped (read 0, state kept); read-only tokens (`write_mask`
    False) keep their read but not their write.
    """
    B, T, H, r = q.shape
    S = torch.zeros(B, H, r, r) if S0 is None else S0
    reads = []
    for t in range(T):
        read, S_new = delta_rule_step(q[:, t], k[:, t], v[:, t], beta[:, t], S, mode=mode)
        if mask is not None:
            read = read * mask[:, t, None, None]
        writes = torch.ones(B, dtype=torch.bool)
        if mask is not None:
            writes = writes & mask[:, t]
        if write_mask is not None:
            writes = writes & write_mask[:, t]
        if not writes.all():
            S_new = torch.where(writes[:, None, None, None], S_new, S)
        reads.append(read)
        S = S_new
    return torch.stack(reads, dim=1), S


def reference_float64(q, k, v, beta, S0, mask, mode):
    """Independent scalar-loop reference in float64, written straight from the spec."""
    B, T, H, r = q.shape
    q, k, v, beta, S = q.double(), k.double(), v.double(), beta.double(), S0.double().clone()
    reads = torch.zeros(B, T, H, r, dtype=torch.float64)
    for b_, t, h in itertools.product(range(B), range(T), range(H)):
        if mask is not None and not mask[b_, t]:
            continue
        S_old = S[b_, h].clone()
        for i in range(r):  # state row i = value index i
            reads[b_, t, h, i] = sum(S_old[i, j] * q[b_, t, h, j] for j in range(r))
            sk = sum(S_old[i, j] * k[b_, t, h, j] for j in range(r))
            bi = beta[b_, t, h, i]
            keep = (1 - bi) if mode == "standard" else 1.0
            for j in range(r):
                S[b_, h, i, j] = keep * S_old[i, j] + bi * (v[b_, t, h, i] - sk) * k[b_, t, h, j]
    return reads, S


def value_and_grads(fn, inputs, cot_reads, cot_state):
    """Run `fn(q, k, v, beta, S0)` on fresh leaves; return reads, state and grads of (q, k, v, beta, S0)."""
    leaves = [x.detach().clone().requires_grad_(True) for x in inputs]
    reads, state = fn(*leaves)
    loss = (reads.float() * cot_reads).sum() + (state * cot_state).sum()
    grads = torch.autograd.grad(loss, leaves)
    return reads.detach(), state.detach(), grads


# --------------------------------------------------------------------------- covering design


@dataclass(frozen=True)
class Case:
    B: int
    T: int
    H: int
    r: int
    mask: str  # "nomask" | "holes" | "leftpad"
    init: str  # "s0" (zero state) | "sR" (random state)
    dtype: str  # "fp32" | "bf16"
    mode: str

    @property
    def id(self) -> str:
        return f"B{self.B}-T{self.T}-H{self.H}-r{self.r}-{self.mask}-{self.init}-{self.dtype}-{self.mode}"


def _grid() -> list[Case]:
    """Every T x every mode, 3 cases each, with the other factors rotated, plus a few big ones.

    Over the 30 rotated cases every value of B, H, init and dtype appears 14-16
    times, every r and mask kind 10 times, and every T sees each r and each
    mask kind twice and each B, init and dtype three times.
    """
    Ts, Bs, Hs, Rs = (1, 7, 64, 333, 1024), (1, 3), (1, 4), (4, 8, 16)
    masks, inits, dtypes = ("nomask", "holes", "leftpad"), ("s0", "sR"), ("fp32", "bf16")
    cases = []
    for i, (T, mode) in enumerate(itertools.product(Ts, MODES)):
        for rep in range(3):
            n = 3 * i + rep
            cases.append(
                Case(
                    B=Bs[n % 2],
                    T=T,
                    H=Hs[(n // 2) % 2],
                    r=Rs[(rep + i) % 3],
                    mask=masks[(rep + i // 2) % 3],
                    init=inits[(n // 3 + rep) % 2],
                    dtype=dtypes[((n // 2 + i) if rep != 1 else i) % 2],
                    mode=mode,
                )
            )
    cases += [
        Case(3, 1024, 4, 16, "nomask", "sR", "fp32", "standard"),
        Case(3, 1024, 4, 16, "leftpad", "sR", "fp32", "no_decay"),
        Case(3, 1024, 4, 16, "holes", "s0", "bf16", "standard"),
    ]
    return cases


CASES = _grid()


def test_grid_covers_every_factor_value():
    want = {
        "B": (1, 3), "T": (1, 7, 64, 333, 1024), "H": (1, 4), "r": (4, 8, 16),
        "mask": ("nomask", "holes", "leftpad"), "init": ("s0", "sR"), "dtype": ("fp32", "bf16"), "mode": MODES,
    }  # fmt: skip
    for field, values in want.items():
        counts = collections.Counter(getattr(c, field) for c in CASES)
        assert set(counts) == set(values), f"{field}: {counts}"
        assert min(counts.values()) >= 3, f"{field}: some value appears fewer than 3 times: {counts}"
    assert {(c.T, c.mode) for c in CASES} == set(itertools.product(want["T"], MODES))
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_naive_chunked_step_agree(case: Case):
    dtype = torch.float32 if case.dtype == "fp32" else torch.bfloat16
    seed = zlib.crc32(case.id.encode())  # stable across processes
    q, k, v, beta, S0, mask = make_inputs(case.B, case.T, case.H, case.r, dtype=dtype, seed=seed, init=case.init, mask_kind=case.mask)
    g = torch.Generator().manual_seed(seed + 1)
    cot_reads = torch.randn(case.B, case.T, case.H, case.r, generator=g).to(dtype).float()
    cot_state = torch.randn(case.B, case.H, case.r, case.r, generator=g)
    inputs = (q, k, v, beta, S0)
    mode = case.mode

    def naive(q, k, v, beta, S0):
        return delta_rule_naive(q, k, v, beta, initial_state=S0, mask=mask, mode=mode)

    def chunked(q, k, v, beta, S0):
        return delta_rule_chunked(q, k, v, beta, initial_state=S0, mask=mask, mode=mode)

    def stepped(q, k, v, beta, S0):
        return run_steps(q, k, v, beta, S0, mask=mask, mode=mode)

    want_reads, want_state, want_grads = value_and_grads(naive, inputs, cot_reads, cot_state)
    value_tol, grad_tol = (FP32_VALUE_TOL, FP32_GRAD_TOL) if case.dtype == "fp32" else (BF16_VALUE_TOL, BF16_GRAD_TOL)
    names = ("q", "k", "v", "beta", "initial_state")
    for impl, fn in (("chunked", chunked), ("step", stepped)):
        reads, state, grads = value_and_grads(fn, inputs, cot_reads, cot_state)
        assert reads.dtype == dtype, f"{impl}: reads dtype {reads.dtype}, expected {dtype}"
        assert state.dtype == torch.float32, f"{impl}: state dtype {state.dtype}, expected float32"
        assert_close_rel(f"{impl} reads", reads, want_reads, value_tol)
        # the state is float32 in every impl, computed in float32 from the same (possibly bf16) inputs
        assert_close_rel(f"{impl} final_state", state, want_state, FP32_VALUE_TOL)
        for name, got, want in zip(names, grads, want_grads):
            assert got.dtype == want.dtype
            assert_close_rel(f"{impl} grad {name}", got, want, grad_tol)
    assert want_reads.dtype == dtype and want_state.dtype == torch.float32
    if mask is not None:  # masked tokens read exactly 0 and get no gradient
        assert (want_reads[~mask] == 0).all()
        for name, grad in zip(names[:4], want_grads[:4]):
            assert (grad[~mask] == 0).all(), f"naive grad {name} nonzero at a masked token"


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "holes"])
def test_naive_matches_float64_scalar_reference(mode, masked):
    q, k, v, beta, S0, mask = make_inputs(2, 9, 2, 3, seed=11, init="sR", mask_kind="holes" if masked else "nomask")
    want_reads, want_state = reference_float64(q, k, v, beta, S0, mask, mode)
    for impl in ("naive", "chunked"):
        reads, state = delta_rule(q, k, v, beta, initial_state=S0, mask=mask, mode=mode, impl=impl, chunk_size=4)
        assert_close_rel(f"{impl} reads vs float64", reads, want_reads, FP32_VALUE_TOL)
        assert_close_rel(f"{impl} state vs float64", state, want_state, FP32_VALUE_TOL)


# --------------------------------------------------------------------------- hand-computed example


def test_hand_computed_two_tokens_r2():
    """B = H = 1, r = 2, S0 = I. Rows of S are value indices, columns key indices.

    Token 1: q1 = (0, 1), k1 = (1, 0), v1 = (2, 4), b1 = (0.5, 0.25) (one gate per row).
      read1 = S0 q1 = (0, 1) in both modes (read before write).
      standard, s' = (1-b) s - b (s.k) k + b v k:
        row 0: s = (1, 0), s.k = 1: 0.5*(1, 0) - 0.5*1*(1, 0) + 0.5*2*(1, 0) = (1, 0)
        row 1: s = (0, 1), s.k = 0: 0.75*(0, 1) - 0 + 0.25*4*(1, 0)        = (1, 0.75)
      no_decay, s' = s - b (s.k) k + b v k:
        row 0: (1, 0) - 0.5*(1, 0) + 1*(1, 0) = (1.5, 0)
        row 1: (0, 1) - 0 + 1*(1, 0)          = (1, 1)
    Token 2: q2 = (0.8, 0.6), k2 = (0.6, 0.8), v2 = (1, -1), b2 = (0.5, 0.5).
      read2 = S1 q2:
        standard: (1*0.8 + 0, 1*0.8 + 0.75*0.6) = (0.8, 1.25)
        no_decay: (1.5*0.8 + 0, 1*0.8 + 1*0.6)  = (1.2, 1.4)
      standard:
        row 0: s = (1, 0), s.k = 0.6: 0.5*(1, 0) - 0.5*0.6*(0.6, 0.8) + 0.5*1*(0.6, 0.8)
               = (0.5, 0) - (0.18, 0.24) + (0.3, 0.4) = (0.62, 0.16)
        row 1: s = (1, 0.75), s.k = 1.2: 0.5*(1, 0.75) - 0.5*1.2*(0.6, 0.8) + 0.5*(-1)*(0.6, 0.8)
               = (0.5, 0.375) - (0.36, 0.48) - (0.3, 0.4) = (-0.16, -0.505)
      no_decay:
        row 0: s = (1.5, 0), s.k = 0.9: (1.5, 0) - 0.45*(0.6, 0.8) + 0.5*(0.6, 0.8)
               = (1.5, 0) - (0.27, 0.36) + (0.3, 0.4) = (1.53, 0.04)
        row 1: s = (1, 1), s.k = 1.4: (1, 1) - 0.7*(0.6, 0.8) - 0.5*(0.6, 0.8)
               = (1, 1) - (0.42, 0.56) - (0.3, 0.4) = (0.28, 0.04)
    """
    q = torch.tensor([[0.0, 1.0], [0.8, 0.6]]).view(1, 2, 1, 2)
    k = torch.tensor([[1.0, 0.0], [0.6, 0.8]]).view(1, 2, 1, 2)
    v = torch.tensor([[2.0, 4.0], [1.0, -1.0]]).view(1, 2, 1, 2)
    beta = torch.tensor([[0.5, 0.25], [0.5, 0.5]]).view(1, 2, 1, 2)
    S0 = torch.eye(2).view(1, 1, 2, 2)
    expected = {
        "standard": ([[0.0, 1.0], [0.8, 1.25]], [[0.62, 0.16], [-0.16, -0.505]]),
        "no_decay": ([[0.0, 1.0], [1.2, 1.4]], [[1.53, 0.04], [0.28, 0.04]]),
    }
    for mode, (reads_hand, state_hand) in expected.items():
        want_reads = torch.tensor(reads_hand).view(1, 2, 1, 2)
        want_state = torch.tensor(state_hand).view(1, 1, 2, 2)
        for impl, (reads, state) in {
            "naive": delta_rule_naive(q, k, v, beta, initial_state=S0, mode=mode),
            "chunked": delta_rule_chunked(q, k, v, beta, initial_state=S0, mode=mode),
            "chunked-c1": delta_rule_chunked(q, k, v, beta, initial_state=S0, mode=mode, chunk_size=1),
            "step": run_steps(q, k, v, beta, S0, mode=mode),
        }.items():
            assert_close_rel(f"{mode} {impl} reads", reads, want_reads, 1e-6)
            assert_close_rel(f"{mode} {impl} state", state, want_state, 1e-6)


# --------------------------------------------------------------------------- structural properties


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("impl", ["naive", "chunked"])
@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "holes"])
def test_split_sequence_equals_one_call(impl, mode, masked):
    q, k, v, beta, S0, mask = make_inputs(2, 45, 2, 8, seed=3, init="sR", mask_kind="holes" if masked else "nomask")
    fn = delta_rule_naive if impl == "naive" else delta_rule_chunked
    want_reads, want_state = fn(q, k, v, beta, initial_state=S0, mask=mask, mode=mode)
    for cut in (1, 13, 16, 44):  # 13: not a chunk boundary; 16: one
        first = [x[:, :cut] for x in (q, k, v, beta)]
        second = [x[:, cut:] for x in (q, k, v, beta)]
        m1, m2 = (None, None) if mask is None else (mask[:, :cut], mask[:, cut:])
        reads1, state1 = fn(*first, initial_state=S0, mask=m1, mode=mode)
        reads2, state2 = fn(*second, initial_state=state1, mask=m2, mode=mode)
        assert_close_rel(f"cut={cut} reads", torch.cat([reads1, reads2], dim=1), want_reads, FP32_VALUE_TOL)
        assert_close_rel(f"cut={cut} state", state2, want_state, FP32_VALUE_TOL)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("impl", ["naive", "chunked"])
def test_masked_token_changes_nothing(impl, mode):
    """Inserting a masked token (with arbitrary values) = running without it; it reads 0 and gets no grad."""
    fn = delta_rule_naive if impl == "naive" else delta_rule_chunked
    q, k, v, beta, S0, _ = make_inputs(1, 21, 2, 4, seed=5, init="sR")
    for p in (0, 7, 20):
        keep = [t for t in range(21) if t != p]
        mask = torch.ones(1, 21, dtype=torch.bool)
        mask[0, p] = False
        leaves = [x.clone().requires_grad_(True) for x in (q, k, v, beta)]
        reads, state = fn(*leaves, initial_state=S0, mask=mask, mode=mode)
        short_reads, short_state = fn(*(x[:, keep] for x in (q, k, v, beta)), initial_state=S0, mode=mode)
        assert (reads[:, p] == 0).all(), "a masked token must read 0"
        assert_close_rel(f"p={p} reads of valid tokens", reads[:, keep], short_reads, FP32_VALUE_TOL)
        assert_close_rel(f"p={p} final state", state, short_state, FP32_VALUE_TOL)
        grads = torch.autograd.grad((reads * torch.randn_like(reads)).sum() + state.sum(), leaves)
        for name, grad in zip("q k v beta".split(), grads):
            assert (grad[:, p] == 0).all(), f"p={p}: grad {name} nonzero at the masked token"
            assert grad[:, keep].abs().sum() > 0, f"p={p}: grad {name} vanished at valid tokens"


@pytest.mark.parametrize("mode", MODES)
def test_fully_masked_sequence_keeps_state(mode):
    q, k, v, beta, S0, _ = make_inputs(2, 20, 1, 4, seed=6, init="sR")
    mask = torch.zeros(2, 20, dtype=torch.bool)
    for fn in (delta_rule_naive, delta_rule_chunked):
        reads, state = fn(q, k, v, beta, initial_state=S0, mask=mask, mode=mode)
        assert (reads == 0).all()
        assert_close_rel(f"{fn.__name__} state", state, S0, 1e-7)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("impl", ["naive", "chunked"])
def test_batch_rows_with_different_masks_equal_each_row_alone(impl, mode):
    fn = delta_rule_naive if impl == "naive" else delta_rule_chunked
    B, T = 3, 37
    q, k, v, beta, S0, _ = make_inputs(B, T, 2, 8, seed=8, init="sR")
    g = torch.Generator().manual_seed(9)
    mask = torch.stack([
        torch.ones(T, dtype=torch.bool),  # all valid
        torch.rand(T, generator=g) > 0.4,  # random holes
        torch.arange(T) >= 19,  # left padding
    ])  # fmt: skip
    reads, state = fn(q, k, v, beta, initial_state=S0, mask=mask, mode=mode)
    for b in range(B):
        row = [x[b : b + 1] for x in (q, k, v, beta)]
        reads_b, state_b = fn(*row, initial_state=S0[b : b + 1], mask=mask[b : b + 1], mode=mode)
        assert_close_rel(f"row {b} reads", reads[b : b + 1], reads_b, FP32_VALUE_TOL)
        assert_close_rel(f"row {b} state", state[b : b + 1], state_b, FP32_VALUE_TOL)
        # and a row alone equals the row with its masked tokens removed
        keep = mask[b].nonzero().squeeze(-1)
        packed_reads, packed_state = fn(*(x[:, keep] for x in row), initial_state=S0[b : b + 1], mode=mode)
        assert_close_rel(f"row {b} packed reads", reads_b[:, keep], packed_reads, FP32_VALUE_TOL)
        assert_close_rel(f"row {b} packed state", state_b, packed_state, FP32_VALUE_TOL)


@pytest.mark.parametrize("mode", MODES)
def test_chunk_sizes_including_non_divisors_of_T(mode):
    q, k, v, beta, S0, mask = make_inputs(2, 50, 2, 8, seed=10, init="sR", mask_kind="holes")
    want_reads, want_state = delta_rule_naive(q, k, v, beta, initial_state=S0, mask=mask, mode=mode)
    for C in (1, 3, 7, 16, 17, 49, 50, 64, 100):  # 50 % C != 0 for most; C > T too
        reads, state = delta_rule_chunked(q, k, v, beta, initial_state=S0, mask=mask, mode=mode, chunk_size=C)
        assert_close_rel(f"chunk_size={C} reads", reads, want_reads, FP32_VALUE_TOL)
        assert_close_rel(f"chunk_size={C} state", state, want_state, FP32_VALUE_TOL)


@pytest.mark.parametrize("mode", MODES)
def test_default_initial_state_is_zeros_and_inputs_untouched(mode):
    q, k, v, beta, S0, mask = make_inputs(2, 19, 2, 4, seed=12, init="s0", mask_kind="holes")
    for fn in (delta_rule_naive, delta_rule_chunked):
        r_none, s_none = fn(q, k, v, beta, mask=mask, mode=mode)
        r_zero, s_zero = fn(q, k, v, beta, initial_state=S0, mask=mask, mode=mode)
        assert_close_rel(f"{fn.__name__} reads None vs zeros", r_none, r_zero, 0.0)
        assert_close_rel(f"{fn.__name__} state None vs zeros", s_none, s_zero, 0.0)
    state = torch.randn(2, 2, 4, 4)
    before = state.clone()
    _, new_state = delta_rule_step(q[:, 0], k[:, 0], v[:, 0], beta[:, 0], state, mode=mode)
    assert torch.equal(state, before), "delta_rule_step modified its input state"
    assert not torch.equal(new_state, before)


@pytest.mark.parametrize("state_dtype", [torch.float64, torch.bfloat16])
def test_state_comes_back_float32_whatever_its_input_dtype(state_dtype):
    q, k, v, beta, S0, _ = make_inputs(2, 11, 2, 4, seed=17, init="sR")
    S0 = S0.to(state_dtype)
    want_reads, want_state = delta_rule_naive(q, k, v, beta, initial_state=S0.float())
    for name, (reads, state) in {
        "naive": delta_rule_naive(q, k, v, beta, initial_state=S0),
        "chunked": delta_rule_chunked(q, k, v, beta, initial_state=S0, chunk_size=4),
        "step": run_steps(q, k, v, beta, S0),
    }.items():
        assert state.dtype == torch.float32, f"{name}: state dtype {state.dtype}"
        assert_close_rel(f"{name} reads", reads, want_reads, FP32_VALUE_TOL)
        assert_close_rel(f"{name} state", state, want_state, FP32_VALUE_TOL)


def test_bf16_autocast_leaves_the_state_recurrence_float32():
    """Training on a GPU runs under bf16 autocast; the ops must still compute the state in float32."""
    q, k, v, beta, S0, mask = make_inputs(2, 40, 2, 4, seed=19, init="sR", mask_kind="holes")
    want = {"naive": delta_rule_naive(q, k, v, beta, initial_state=S0, mask=mask),
            "chunked": delta_rule_chunked(q, k, v, beta, initial_state=S0, mask=mask, chunk_size=8),
            "step": run_steps(q, k, v, beta, S0)}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.is_autocast_enabled("cpu")
        got = {"naive": delta_rule_naive(q, k, v, beta, initial_state=S0, mask=mask),
               "chunked": delta_rule_chunked(q, k, v, beta, initial_state=S0, mask=mask, chunk_size=8),
               "step": run_steps(q, k, v, beta, S0)}
        assert torch.is_autocast_enabled("cpu"), "an op left autocast switched off for its caller"
    for name in want:
        for part, w, g in zip(("reads", "state"), want[name], got[name]):
            assert g.dtype == torch.float32, f"{name} {part}: {g.dtype} under autocast"
            assert torch.equal(g, w), f"{name} {part} changed under bf16 autocast"


def test_modes_differ_and_standard_decays():
    """Sanity: the two modes are different recurrences (guards against `mode` being ignored)."""
    q, k, v, beta, S0, _ = make_inputs(1, 12, 1, 4, seed=13, init="sR")
    for fn in (delta_rule_naive, delta_rule_chunked):
        _, s_std = fn(q, k, v, beta, initial_state=S0, mode="standard")
        _, s_nd = fn(q, k, v, beta, initial_state=S0, mode="no_decay")
        assert rel_err(s_std, s_nd) > 1e-2, fn.__name__
    # with v = 0 and k orthogonal to the state's columns, standard shrinks each row by (1 - b), no_decay keeps it
    S = torch.zeros(1, 1, 2, 2)
    S[..., :, 1] = torch.tensor([3.0, -2.0])
    k1 = torch.tensor([1.0, 0.0]).view(1, 1, 1, 2)
    b1 = torch.tensor([0.25, 0.5]).view(1, 1, 1, 2)
    zero = torch.zeros(1, 1, 1, 2)
    for fn in (delta_rule_naive, delta_rule_chunked):
        _, s_std = fn(k1, k1, zero, b1, initial_state=S, mode="standard")
        _, s_nd = fn(k1, k1, zero, b1, initial_state=S, mode="no_decay")
        assert_close_rel("standard decay", s_std[0, 0, :, 1], torch.tensor([2.25, -1.0]), 1e-7)
        assert_close_rel("no_decay keep", s_nd, S, 1e-7)


def test_empty_sequence():
    q, k, v, beta, S0, _ = make_inputs(2, 0, 3, 4, seed=14, init="sR")
    for fn in (delta_rule_naive, delta_rule_chunked):
        reads, state = fn(q, k, v, beta, initial_state=S0)
        assert reads.shape == (2, 0, 3, 4)
        assert_close_rel(f"{fn.__name__} state", state, S0, 0.0)


# --------------------------------------------------------------------------- write_mask (read-only tokens)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_write_mask_impls_agree(mode, dtype):
    """Valid-but-read-only tokens combined with masked ones: naive, chunked and step agree, gradients too."""
    torch_dtype = torch.float32 if dtype == "fp32" else torch.bfloat16
    B, T, H, r = 3, 70, 2, 8
    q, k, v, beta, S0, mask = make_inputs(B, T, H, r, dtype=torch_dtype, seed=21, init="sR", mask_kind="holes")
    g = torch.Generator().manual_seed(22)
    write_mask = torch.rand(B, T, generator=g) > 0.4
    cot_reads = torch.randn(B, T, H, r, generator=g).to(torch_dtype).float()
    cot_state = torch.randn(B, H, r, r, generator=g)
    kw = dict(mask=mask, mode=mode, write_mask=write_mask)
    want = value_and_grads(lambda *a: delta_rule_naive(*a[:4], initial_state=a[4], **kw), (q, k, v, beta, S0), cot_reads, cot_state)
    value_tol, grad_tol = (FP32_VALUE_TOL, FP32_GRAD_TOL) if dtype == "fp32" else (BF16_VALUE_TOL, BF16_GRAD_TOL)
    for impl, fn in (
        ("chunked", lambda *a: delta_rule_chunked(*a[:4], initial_state=a[4], chunk_size=16, **kw)),
        ("step", lambda *a: run_steps(*a, **kw)),
    ):
        reads, state, grads = value_and_grads(fn, (q, k, v, beta, S0), cot_reads, cot_state)
        assert reads.dtype == torch_dtype and state.dtype == torch.float32
        assert_close_rel(f"{impl} reads", reads, want[0], value_tol)
        assert_close_rel(f"{impl} final_state", state, want[1], FP32_VALUE_TOL)
        for name, got, ref in zip(("q", "k", "v", "beta", "initial_state"), grads, want[2]):
            assert_close_rel(f"{impl} grad {name}", got, ref, grad_tol)
    read_only = mask & ~write_mask
    assert read_only.any() and (want[0][read_only] != 0).any(), "read-only tokens must still read"
    assert (want[2][2][read_only] == 0).all(), "read-only tokens must get no gradient through v"


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("impl", ["naive", "chunked"])
def test_read_only_token_reads_but_does_not_write(impl, mode):
    fn = delta_rule_naive if impl == "naive" else delta_rule_chunked
    q, k, v, beta, S0, _ = make_inputs(1, 21, 2, 4, seed=23, init="sR")
    p = 9
    write_mask = torch.ones(1, 21, dtype=torch.bool)
    write_mask[0, p] = False
    masked = write_mask.clone()  # the same token fully masked instead
    full_reads, _ = fn(q, k, v, beta, initial_state=S0, mode=mode)
    reads, state = fn(q, k, v, beta, initial_state=S0, mode=mode, write_mask=write_mask)
    masked_reads, masked_state = fn(q, k, v, beta, initial_state=S0, mode=mode, mask=masked)
    # up to and including p it reads exactly like the unmasked run (read before write) ...
    assert_close_rel("reads up to p", reads[:, : p + 1], full_reads[:, : p + 1], FP32_VALUE_TOL)
    assert rel_err(reads[:, p], torch.zeros_like(reads[:, p])) > 0
    # ... and after p like the run where p is masked out entirely
    assert_close_rel("reads after p", reads[:, p + 1 :], masked_reads[:, p + 1 :], FP32_VALUE_TOL)
    assert_close_rel("final state", state, masked_state, FP32_VALUE_TOL)
    assert rel_err(reads[:, p + 1 :], full_reads[:, p + 1 :]) > 1e-3, "the write at p should have mattered"
