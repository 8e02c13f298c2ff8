"""CPU benchmark of an attached δ-mem adapter against its frozen backbone.

Run ``python -m deltamem.bench.adapter [--threads 2] [--repeats 5] [--decode-steps 60] [--clock wall|cpu]``.

On SmolLM2-135M (the embedded backbone from ``deltamem.runtime.load_backbone``
when it loads, else a random Llama with SmolLM2-135M's shape), float32, B = 1,
under ``torch.inference_mode``, it times in one run, the variants interleaved
run by run (rotating which goes first):

* ``forward``: one forward over ``--length`` (1024) tokens, no KV cache;
* ``decode``: one single-token step (with an all-ones attention mask, as
  ``generate`` passes) on a KV cache of ``--context`` (512) tokens; the cache is
  cropped back after every step, so every step sees the same length.

The adapter is the shipped one (``adapters/``, with its weights on the embedded
backbone; a fresh adapter of its shape on random weights). Variants, all with the
same weights:

* ``detached``: a second copy of the backbone with no adapter attached (no hooks at all);
* ``backbone``: the attached model outside any ``use_memory`` block (hooks installed, idle);
* ``δ-mem write``: the attached model inside ``use_memory(write=True)`` (one write per token);
* ``δ-mem read``: inside ``use_memory(write=False)`` (what ``generate`` does);
* ``... (torch ops)``: the two δ-mem decode steps without the fused CPU kernels
  (``deltamem.ops.kernels``), timed where numba is installed, to show what they save.

Each time is reported as min / median; each ratio as min over min and as the
median of run-by-run ratios (both resist other load on a shared machine). The
target is ``δ-mem write / backbone`` <= 1.05x for both forward and decode;
``backbone / detached`` is the cost of idle hooks. ``--clock cpu`` times with
process CPU time instead of wall time, which is steadier when other jobs share
the cores (use it with ``--threads 1``: spinning worker threads also count).
``--profile`` adds a torch.profiler table of δ-mem decode steps.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import platform
import statistics
import sys
import time

import torch

from deltamem.adapter import DeltaMemConfig, MemoryState, attach_delta_mem, use_memory
from deltamem.ops import kernels

TARGET = 1.05
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
VARIANTS = ("detached", "backbone", "δ-mem write", "δ-mem read")
TORCH_OPS = " (torch ops)"  # suffix of the decode-only variants that run without the fused kernels
SMOLLM2_135M = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                    num_key_value_heads=3, vocab_size=49152, max_position_embeddings=8192, tie_word_embeddings=True,
                    rms_norm_eps=1e-5, rope_theta=100000.0)


def attach_adapter(model, random_weights: bool) -> str:
    """Attach the shipped adapter (its shape; its weights on the real backbone), else a fresh one-head adapter."""
    from deltamem.adapter import load_adapter, read_adapter_config
    from deltamem.runtime.model_setup import shipped_adapter_dir

    shipped = shipped_adapter_dir()
    if shipped is None:
        attach_delta_mem(model, DeltaMemConfig(write_granularity="token", update_mode="standard"))
        return "fresh one-head adapter"
    if random_weights:
        attach_delta_mem(model, read_adapter_config(shipped)[0])
        return f"fresh adapter of {shipped.name}'s shape"
    load_adapter(model, shipped)
    return f"adapter {shipped.name}"


def load_models(random_weights: bool) -> tuple[torch.nn.Module, torch.nn.Module, str]:
    """Two identical copies of the backbone: `(to attach δ-mem to, left plain)`, and where they came from."""
    if not random_weights:
        try:
            from deltamem.runtime.backbone import load_backbone

            a = load_backbone(progress=False)[0]
            b = load_backbone(progress=False)[0]
            return a.float().eval(), b.float().eval(), "SmolLM2-135M-Instruct (embedded backbone)"
        except Exception as e:  # noqa: BLE001 - any failure falls back to random weights of the same shape
            print(f"load_backbone() failed ({type(e).__name__}: {e}); using random weights", file=sys.stderr)
    from transformers import LlamaConfig, LlamaForCausalLM

    models = []
    for _ in range(2):
        torch.manual_seed(0)
        models.append(LlamaForCausalLM(LlamaConfig(**SMOLLM2_135M)).float().eval())
    return models[0], models[1], "random Llama with SmolLM2-135M's shape"


def cache_kw(model) -> str:
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def crop(cache, length: int) -> None:
    """Cut a KV cache back to `length` tokens (recent transformers take minus the tokens to drop)."""
    extra = cache.get_seq_length() - length
    if extra > 0:
        try:
            cache.crop(-extra)
        except ValueError:
            cache.crop(length)


class Bench:
    """Holds the two models, the inputs and one prefilled KV cache (and memory) per variant."""

    def __init__(self, attached, plain, length: int, context: int, clock=time.perf_counter,
                 variants: tuple[str, ...] = VARIANTS):
        self.clock = clock
        self.models = {v: plain if v == "detached" else attached for v in variants}
        self.attached = attached
        g = torch.Generator().manual_seed(0)
        vocab = attached.config.vocab_size
        self.ids = torch.randint(0, vocab, (1, length), generator=g)
        self.ctx = torch.randint(0, vocab, (1, context + 1), generator=g)
        self.context = context
        self.kw = cache_kw(attached)
        self.next_token = self.ctx[:, context:]
        self.step_mask = torch.ones(1, context + 1, dtype=torch.long)
        self.caches, self.states = {}, {}
        for v in variants:
            self.states[v] = MemoryState.zeros(attached) if v.startswith("δ-mem") else None
            with self.memory(v, write=True):
                out = self.models[v](self.ctx[:, :context], attention_mask=torch.ones(1, context, dtype=torch.long),
                                     use_cache=True)
            self.caches[v] = getattr(out, self.kw)

    def memory(self, variant: str, write: bool | None = None):
        if self.states.get(variant) is None:
            return contextlib.nullcontext()
        write = variant.startswith("δ-mem write") if write is None else write
        return use_memory(self.attached, self.states[variant], write=write)

    def forward(self, variant: str) -> float:
        if self.states[variant] is not None:
            self.states[variant] = MemoryState.zeros(self.attached)
        model = self.models[variant]
        with self.memory(variant):
            t0 = self.clock()
            model(self.ids, use_cache=False)
            return self.clock() - t0

    def decode(self, variant: str) -> float:
        """One timed decode step; the cache is cropped back to `context` tokens afterwards (untimed)."""
        model, cache = self.models[variant], self.caches[variant]
        torch_ops = kernels.disabled() if variant.endswith(TORCH_OPS) else contextlib.nullcontext()
        with self.memory(variant), torch_ops:
            t0 = self.clock()
            model(self.next_token, attention_mask=self.step_mask, use_cache=True, **{self.kw: cache})
            elapsed = self.clock() - t0
        crop(cache, self.context)
        return elapsed


def rotated(r: int, variants: tuple[str, ...] = VARIANTS) -> tuple[str, ...]:
    k = r % len(variants)
    return variants[k:] + variants[:k]


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    attached, plain, source = load_models(args.random)
    adapter = attach_adapter(attached, args.random)
    # the decode step also without the fused kernels, where they are installed, to show what they save
    decoded = VARIANTS + (tuple(v + TORCH_OPS for v in VARIANTS[2:]) if kernels.kernels() else ())
    fwd = {v: [] for v in VARIANTS}
    dec = {v: [] for v in decoded}
    with torch.inference_mode():
        bench = Bench(attached, plain, args.length, args.context, CLOCKS[args.clock], decoded)
        for v in decoded:  # warm-up
            if v in VARIANTS:
                bench.forward(v)
            for _ in range(3):
                bench.decode(v)
        for r in range(args.decode_steps):  # decode: every variant once per round, rotating who goes first
            for v in rotated(r, decoded):
                dec[v].append(bench.decode(v))
        for r in range(args.repeats):
            for v in rotated(r):
                fwd[v].append(bench.forward(v))
        profile = profile_decode(bench) if args.profile else None
    return dict(source=f"{source}, {adapter}", fwd=fwd, dec=dec, profile=profile,
                layers=attached.config.num_hidden_layers)


def profile_decode(bench: Bench, steps: int = 20) -> str:
    from torch.profiler import ProfilerActivity, profile

    for _ in range(3):
        bench.decode("δ-mem write")
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            bench.decode("δ-mem write")
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25)


def ratios(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """`(min(xs) / min(ys), median of the paired ratios xs[i] / ys[i])`: two contention-robust views."""
    return min(xs) / min(ys), statistics.median(x / y for x, y in zip(xs, ys))


def report(res: dict, args) -> str:
    fwd, dec = res["fwd"], res["dec"]
    ms = lambda xs: f"{min(xs) * 1e3:.1f} / {statistics.median(xs) * 1e3:.1f}"  # noqa: E731
    rr = lambda xs, ys: "{:.3f}x / {:.3f}x".format(*ratios(xs, ys))  # noqa: E731
    lines = [
        f"backbone: {res['source']}; torch {torch.__version__}, {args.threads} threads, {platform.machine()}; "
        f"float32, B=1, inference_mode; clock: {args.clock}",
        f"forward: T={args.length}, no cache, {args.repeats} runs per variant; decode: 1 token on a {args.context}-token "
        f"KV cache, {args.decode_steps} steps per variant; variants interleaved run by run",
        "times: min / median; ratios: min over min / median of run-by-run ratios",
        "",
        f"| variant | forward T={args.length} (ms) | vs backbone | decode step (ms) | vs backbone |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for v in dec:
        forward = f"{ms(fwd[v])} | {rr(fwd[v], fwd['backbone'])}" if v in fwd else "— | —"
        lines.append(f"| {v} | {forward} | {ms(dec[v])} | {rr(dec[v], dec['backbone'])} |")
    f_min, f_med = ratios(fwd["δ-mem write"], fwd["backbone"])
    d_min, d_med = ratios(dec["δ-mem write"], dec["backbone"])
    verdict = lambda a, b: "meets" if max(a, b) <= TARGET else ("MISSES" if min(a, b) > TARGET else "borderline on")  # noqa: E731
    overhead = (min(dec["δ-mem write"]) - min(dec["backbone"])) * 1e6
    lines += [
        "",
        f"δ-mem write / backbone: forward {f_min:.3f}x / {f_med:.3f}x ({verdict(f_min, f_med)} the {TARGET}x target), "
        f"decode {d_min:.3f}x / {d_med:.3f}x ({verdict(d_min, d_med)} the {TARGET}x target)",
        "idle hooks (backbone / detached): forward {:.3f}x / {:.3f}x, decode {:.3f}x / {:.3f}x".format(
            *ratios(fwd["backbone"], fwd["detached"]), *ratios(dec["backbone"], dec["detached"])),
        f"δ-mem write decode overhead (min - min): {overhead / 1e3:.2f} ms per step, "
        f"{overhead / res['layers']:.0f} µs per layer",
    ]
    if "δ-mem write" + TORCH_OPS in dec:
        lines.append("fused decode kernels (ops.kernels) / torch ops: write {:.3f}x / {:.3f}x, read {:.3f}x / {:.3f}x".format(
            *ratios(dec["δ-mem write"], dec["δ-mem write" + TORCH_OPS]),
            *ratios(dec["δ-mem read"], dec["δ-mem read" + TORCH_OPS])))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5, help="timed forwards per variant")
    p.add_argument("--length", type=int, default=1024, help="tokens of the timed forward")
    p.add_argument("--context", type=int, default=512, help="KV cache length of the timed decode step")
    p.add_argument("--decode-steps", type=int, default=60, help="timed decode steps per variant")
    p.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                   help="wall: perf_counter; cpu: process CPU time (steadier on a busy machine; use with --threads 1)")
    p.add_argument("--random", action="store_true", help="random weights of SmolLM2-135M's shape (no backbone load)")
    p.add_argument("--profile", action="store_true", help="also print a torch.profiler table of δ-mem decode steps")
    args = p.parse_args(argv)
    res = run(args)
    print(report(res, args))
    if res["profile"]:
        print("\ntorch.profiler, δ-mem write decode steps (self CPU time):\n" + res["profile"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
