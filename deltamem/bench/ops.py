"""CPU benchmark of the δ-mem memory op against the per-token loop and the Hugging Face peer.

Run ``python -m deltamem.bench.ops [--threads 2] [--repeats 5] [--lengths 1024 4096 8192]``.

Float32, B = 1, H = 1, r = 8, both modes ("standard" is the headline). In one
run it times the forward pass (under ``torch.no_grad``) and forward+backward
(gradients of q, k, v, beta and the initial state) of

* ``naive``: ``delta_rule_naive``, the sequential per-token loop;
* ``chunked``: ``delta_rule_chunked`` (our op, default chunk size);
* ``peer``: ``torch_chunk_gated_delta_rule`` from
  ``transformers.models.qwen3_next.modeling_qwen3_next`` (chunk size 64, its
  default), fed through the mapping in `peer_delta_rule`.

Before timing it checks once per mode that the peer's reads, final state and
gradients equal ours and prints the largest relative error. Times are the
minimum over repeats after one warm-up call, measured with ``time.perf_counter``.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import platform
import sys
import time

import torch
import torch.nn.functional as F

from deltamem.ops import delta_rule_chunked, delta_rule_naive
from deltamem.ops.chunked import DEFAULT_CHUNK_SIZE

B, H, R = 1, 1, 8
MODES = ("standard", "no_decay")
PEER_CHUNK_SIZE = 64
CHECK_TOL = 1e-3  # max relative error allowed between the peer and our op (both float32)


def load_peer():
    """Import the HF reference kernel with its "falling back to PyTorch" warning silenced."""
    from transformers.utils import logging as hf_logging

    hf_logging.get_logger("transformers.integrations.hub_kernels").setLevel(logging.ERROR)
    from transformers.models.qwen3_next.modeling_qwen3_next import torch_chunk_gated_delta_rule

    return torch_chunk_gated_delta_rule


def peer_delta_rule(peer, q, k, v, beta, initial_state, mode="standard"):
    """Our op expressed with HF's gated delta rule: one HF head per state row.

    HF keeps a [key dim, value dim] state per value head, decays it by exp(g), writes
    with beta (v - exp(g) S^T k) and reads S^T q * dk^-0.5 AFTER the write. Each of our
    H * r state rows is a recurrence s_t = a_t s_{t-1} + b_t (v_t - s_{t-1}.k_t) k_t in
    key space, so it becomes one HF value head (key dim r, value dim 1) that shares its
    head's q and k (HF's grouped heads: H key heads, H * r value heads):

    * standard: g = log(1 - b), HF beta = b / (1 - b), HF value = (1 - b) v, because
      (1-b) s - b (s.k) k + b v k = (1-b) [s - b/(1-b) (s.k) k + b/(1-b) ((1-b) v) k];
    * no_decay: g = 0, HF beta = b, HF value = v.

    Reads: ours read before the write, so HF's output at t-1 with query q_t is our
    read at t; queries are shifted one step left and scaled by sqrt(r) to undo HF's
    r^-0.5. Our first read, S0 @ q_0, is computed directly.
    """
    Bq, T, Hq, r = q.shape
    b = beta.float()
    if mode == "standard":
        g, hf_beta, hf_v = torch.log1p(-b), b / (1 - b), (1 - b) * v
    else:
        g, hf_beta, hf_v = torch.zeros_like(b), b, v
    q_next = torch.cat([q[:, 1:], q.new_zeros(Bq, 1, Hq, r)], dim=1) * math.sqrt(r)
    out, state = peer(
        q_next,
        k,
        hf_v.reshape(Bq, T, Hq * r, 1),
        g=g.reshape(Bq, T, Hq * r),
        beta=hf_beta.reshape(Bq, T, Hq * r),
        chunk_size=PEER_CHUNK_SIZE,
        initial_state=initial_state.reshape(Bq, Hq * r, r, 1),
        output_final_state=True,
    )
    first = (initial_state @ q[:, 0].unsqueeze(-1)).squeeze(-1)  # [B, H, r]
    reads = torch.cat([first.unsqueeze(1), out[:, :-1].reshape(Bq, T - 1, Hq, r)], dim=1)
    return reads, state.reshape(Bq, Hq, r, r)


def make_inputs(T: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    q = F.normalize(torch.randn(B, T, H, R, generator=g), dim=-1)
    k = F.normalize(torch.randn(B, T, H, R, generator=g), dim=-1)
    v = torch.randn(B, T, H, R, generator=g)
    beta = 0.05 + 0.9 * torch.rand(B, T, H, R, generator=g)  # peer's beta = b / (1 - b) stays <= 19
    S0 = 0.5 * torch.randn(B, H, R, R, generator=g)
    cot_reads = torch.randn(B, T, H, R, generator=g)
    cot_state = torch.randn(B, H, R, R, generator=g)
    return (q, k, v, beta, S0), (cot_reads, cot_state)


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.double() - want.double()).abs().max() / want.double().abs().max().clamp_min(1e-30)).item()


def forward_backward(fn, inputs, cots):
    leaves = [x.detach().clone().requires_grad_(True) for x in inputs]
    reads, state = fn(*leaves)
    loss = (reads * cots[0]).sum() + (state * cots[1]).sum()
    grads = torch.autograd.grad(loss, leaves)
    return reads.detach(), state.detach(), grads


def impls(peer, mode):
    return {
        "naive": lambda q, k, v, b, s: delta_rule_naive(q, k, v, b, initial_state=s, mode=mode),
        "chunked": lambda q, k, v, b, s: delta_rule_chunked(q, k, v, b, initial_state=s, mode=mode),
        "peer": lambda q, k, v, b, s: peer_delta_rule(peer, q, k, v, b, s, mode=mode),
    }


def check_peer(peer, T: int) -> float:
    """Reads, final state and all five gradients: peer vs chunked vs naive. Returns the worst rel err."""
    worst = 0.0
    for mode in MODES:
        inputs, cots = make_inputs(T, seed=123)
        fns = impls(peer, mode)
        want = forward_backward(fns["naive"], inputs, cots)
        for name in ("chunked", "peer"):
            got = forward_backward(fns[name], inputs, cots)
            errs = {"reads": rel_err(got[0], want[0]), "state": rel_err(got[1], want[1])}
            errs.update({f"d{n}": rel_err(a, b) for n, a, b in zip(("q", "k", "v", "beta", "S0"), got[2], want[2])})
            err = max(errs.values())
            worst = max(worst, err)
            detail = ", ".join(f"{k} {v:.1e}" for k, v in errs.items())
            print(f"check {mode:9s} T={T}: {name:7s} vs naive  max rel err {err:.2e}  ({detail})")
    return worst


def bench(peer, mode: str, T: int, repeats: int, naive_repeats: int) -> dict:
    """Min time per (impl, pass). Repeats are interleaved across impls so load drift hits all alike."""
    inputs, cots = make_inputs(T, seed=T)
    short_inputs, short_cots = make_inputs(min(T, 1024), seed=T)
    fns = impls(peer, mode)

    def fwd(fn, x):
        with torch.no_grad():
            fn(*x)

    def fwd_bwd(fn, x, c):
        forward_backward(fn, x, c)

    for name, fn in fns.items():  # warm-up; the naive loop's cost is per token, so warm it on <= 1024 tokens
        x, c = (short_inputs, short_cots) if name == "naive" else (inputs, cots)
        fwd(fn, x)
        fwd_bwd(fn, x, c)
    best = {(name, p): math.inf for name in fns for p in ("fwd", "fwd+bwd")}
    for rep in range(max(repeats, naive_repeats)):
        for name, fn in fns.items():
            if rep >= (naive_repeats if name == "naive" else repeats):
                continue
            t0 = time.perf_counter()
            fwd(fn, inputs)
            t1 = time.perf_counter()
            fwd_bwd(fn, inputs, cots)
            t2 = time.perf_counter()
            best[name, "fwd"] = min(best[name, "fwd"], t1 - t0)
            best[name, "fwd+bwd"] = min(best[name, "fwd+bwd"], t2 - t1)
    return best


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats per measurement; the minimum is kept")
    p.add_argument("--naive-repeats", type=int, default=None,
                   help="repeats for the naive loop (default: --repeats below T=4096, 1 from T=4096 on)")
    p.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 8192], help="sequence lengths T")
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    args = p.parse_args(argv)
    if any(T < 2 for T in args.lengths):
        p.error("--lengths must all be >= 2")

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    peer = load_peer()
    import transformers

    print(f"deltamem.bench.ops: torch {torch.__version__}, transformers {transformers.__version__}, "
          f"python {platform.python_version()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads")
    print(f"float32, B={B}, H={H}, r={R}; chunked chunk_size={DEFAULT_CHUNK_SIZE}, peer chunk_size={PEER_CHUNK_SIZE}; "
          f"min over {args.repeats} repeats after a warm-up (naive: see --naive-repeats)")
    worst = check_peer(peer, min(args.lengths))
    if not worst <= CHECK_TOL:
        print(f"FAILED: implementations disagree (max rel err {worst:.2e} > {CHECK_TOL:.0e}); not timing.")
        return 1
    print(f"check passed: max rel err {worst:.2e} over reads, final state and gradients (tol {CHECK_TOL:.0e})\n")

    rows = []
    for mode in args.modes:
        for T in args.lengths:
            naive_reps = args.naive_repeats or (args.repeats if T < 4096 else 1)
            res = bench(peer, mode, T, args.repeats, naive_reps)
            for pass_ in ("fwd", "fwd+bwd"):
                n, c, pe = (res[name, pass_] * 1e3 for name in ("naive", "chunked", "peer"))
                rows.append((mode, T, pass_, n, c, pe, n / c, pe / c))
                print(f"{mode:9s} T={T:5d} {pass_:8s} naive {n:9.1f} ms  chunked {c:8.2f} ms  peer {pe:8.2f} ms  "
                      f"naive/chunked {n / c:6.1f}x  peer/chunked {pe / c:5.2f}x", flush=True)

    print("\n| mode | T | pass | naive loop (ms) | chunked (ms) | HF peer (ms) | naive / chunked | peer / chunked |")
    print("|---|---:|---|---:|---:|---:|---:|---:|")
    for mode, T, pass_, n, c, pe, rn, rp in rows:
        print(f"| {mode} | {T} | {pass_} | {n:.1f} | {c:.2f} | {pe:.2f} | {rn:.1f}x | {rp:.2f}x |")
    print(f"\nfloat32, B={B}, H={H}, r={R}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"transformers {transformers.__version__}; fwd under no_grad; fwd+bwd = grads of q, k, v, beta, S0; "
          f"min over repeats (naive at T >= 4096: 1 run).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
