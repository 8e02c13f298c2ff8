"""CPU benchmark of an attached δ-mem adapter against its frozen backbone.

Run ``python -m deltamem.bench.adapter [--threads 2] [--repeats 5] [--length 1024] [--context 512]``.

On SmolLM2-135M (the embedded backbone from ``deltamem.runtime.load_backbone``
when it loads, else a random Llama with SmolLM2-135M's shape), float32, B = 1,
under ``torch.inference_mode``, it times in one run, interleaving the variants
round by round:

* ``forward``: one forward over ``--length`` tokens (no KV cache);
* ``decode``: one single-token step on a KV cache of ``--context`` tokens
  (the cache is cropped back after every step, so every step sees the same length).

Variants, all the same weights:

* ``detached``: a second copy of the backbone with no adapter attached (no hooks at all);
* ``backbone``: the attached model outside any ``use_memory`` block (hooks installed, idle);
* ``δ-mem write``: the attached model inside ``use_memory(write=True)`` (token granularity, standard update);
* ``δ-mem read``: inside ``use_memory(write=False)``.

Ratios are ``δ-mem write / backbone`` of the median (target: at most 1.05x each)
and ``backbone / detached`` (the cost of idle hooks). ``--profile`` adds a
torch.profiler table of one δ-mem decode step.
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

TARGET = 1.05
VARIANTS = ("detached", "backbone", "δ-mem write", "δ-mem read")
SMOLLM2_135M = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                    num_key_value_heads=3, vocab_size=49152, max_position_embeddings=8192, tie_word_embeddings=True,
                    rms_norm_eps=1e-5, rope_theta=100000.0)


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

    def __init__(self, attached, plain, length: int, context: int):
        self.models = {"detached": plain, "backbone": attached, "δ-mem write": attached, "δ-mem read": attached}
        self.attached = attached
        g = torch.Generator().manual_seed(0)
        vocab = attached.config.vocab_size
        self.ids = torch.randint(0, vocab, (1, length), generator=g)
        self.ctx = torch.randint(0, vocab, (1, context + 1), generator=g)
        self.context = context
        self.kw = cache_kw(attached)
        self.caches, self.states = {}, {}
        for v in VARIANTS:
            self.states[v] = MemoryState.zeros(attached) if v.startswith("δ-mem") else None
            with self.memory(v, write=True):
                out = self.models[v](self.ctx[:, :context], attention_mask=torch.ones(1, context, dtype=torch.long),
                                     use_cache=True)
            self.caches[v] = getattr(out, self.kw)

    def memory(self, variant: str, write: bool | None = None):
        if self.states.get(variant) is None:
            return contextlib.nullcontext()
        return use_memory(self.attached, self.states[variant], write=variant == "δ-mem write" if write is None else write)

    def forward(self, variant: str) -> float:
        if self.states[variant] is not None:
            self.states[variant] = MemoryState.zeros(self.attached)
        model = self.models[variant]
        with self.memory(variant):
            t0 = time.perf_counter()
            model(self.ids, use_cache=False)
            return time.perf_counter() - t0

    def decode(self, variant: str, steps: int) -> list[float]:
        model, cache = self.models[variant], self.caches[variant]
        token = self.ctx[:, self.context:]
        mask = torch.ones(1, self.context + 1, dtype=torch.long)
        times = []
        with self.memory(variant):
            for _ in range(steps):
                t0 = time.perf_counter()
                model(token, attention_mask=mask, use_cache=True, **{self.kw: cache})
                times.append(time.perf_counter() - t0)
                crop(cache, self.context)
        return times


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    attached, plain, source = load_models(args.random)
    attach_delta_mem(attached, DeltaMemConfig(write_granularity="token", update_mode="standard"))
    fwd = {v: [] for v in VARIANTS}
    dec = {v: [] for v in VARIANTS}
    with torch.inference_mode():
        bench = Bench(attached, plain, args.length, args.context)
        for v in VARIANTS:  # warm-up
            bench.forward(v)
            bench.decode(v, 3)
        for r in range(args.repeats):
            order = VARIANTS[r % len(VARIANTS):] + VARIANTS[: r % len(VARIANTS)]  # rotate who goes first
            for v in order:
                fwd[v].append(bench.forward(v))
            for v in order:
                dec[v].extend(bench.decode(v, args.decode_steps))
        profile = profile_decode(bench) if args.profile else None
    return dict(source=source, fwd=fwd, dec=dec, profile=profile, layers=attached.config.num_hidden_layers)


def profile_decode(bench: Bench, steps: int = 20) -> str:
    from torch.profiler import ProfilerActivity, profile

    bench.decode("δ-mem write", 3)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        bench.decode("δ-mem write", steps)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25)


def report(res: dict, args) -> str:
    fwd, dec = res["fwd"], res["dec"]
    med = lambda xs: statistics.median(xs) * 1e3  # noqa: E731
    low = lambda xs: min(xs) * 1e3  # noqa: E731
    lines = [
        f"backbone: {res['source']}; torch {torch.__version__}, {args.threads} threads, {platform.machine()}; "
        f"float32, B=1, inference_mode",
        f"forward: T={args.length}, {args.repeats} runs per variant; decode: 1 token on a {args.context}-token KV "
        f"cache, {args.repeats} x {args.decode_steps} steps per variant; interleaved",
        "",
        f"| variant | forward T={args.length} median (min) ms | vs backbone | decode step median (min) ms | vs backbone |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for v in VARIANTS:
        lines.append(f"| {v} | {med(fwd[v]):.1f} ({low(fwd[v]):.1f}) | {med(fwd[v]) / med(fwd['backbone']):.3f}x | "
                     f"{med(dec[v]):.2f} ({low(dec[v]):.2f}) | {med(dec[v]) / med(dec['backbone']):.3f}x |")
    r_fwd = med(fwd["δ-mem write"]) / med(fwd["backbone"])
    r_dec = med(dec["δ-mem write"]) / med(dec["backbone"])
    lines += [
        "",
        f"δ-mem write / backbone: forward {r_fwd:.3f}x ({'meets' if r_fwd <= TARGET else 'MISSES'} the {TARGET}x target), "
        f"decode {r_dec:.3f}x ({'meets' if r_dec <= TARGET else 'MISSES'} the {TARGET}x target)",
        f"idle hooks (backbone / detached): forward {med(fwd['backbone']) / med(fwd['detached']):.3f}x, "
        f"decode {med(dec['backbone']) / med(dec['detached']):.3f}x",
        f"δ-mem decode overhead per step: {med(dec['δ-mem write']) - med(dec['backbone']):.2f} ms "
        f"({(med(dec['δ-mem write']) - med(dec['backbone'])) * 1e3 / res['layers']:.0f} µs per layer)",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5, help="rounds; each round runs every variant once")
    p.add_argument("--length", type=int, default=1024, help="tokens of the timed forward")
    p.add_argument("--context", type=int, default=512, help="KV cache length of the timed decode step")
    p.add_argument("--decode-steps", type=int, default=10, help="decode steps per variant and round")
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
