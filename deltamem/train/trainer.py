"""Train δ-mem adapters with the backbone frozen (shared/DESIGN.md section 5).

Per episode: a fresh zero state, a write pass over the history (backprop
through the whole recurrence), then a read pass over `[system] + question +
answer` with the state bound read-only; loss = answer CE + gate_reg *
(mean write-pass gate - gate_target)^2 (+ an optional contrastive term that
rewards the own memory over another episode's, optional fact-specific distillation
from the frozen backbone reading the whole history in its prompt, and an optional preservation
term: KL(frozen backbone || backbone + that memory) on unrelated plain text,
so a memory changes answers it holds and leaves other text alone). Data-parallel under torchrun:
each rank takes its share of every batch and gradients are summed.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import tempfile
import time

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from ..adapter import MemoryState, attach_delta_mem, load_adapter, save_adapter, use_memory
from ..runtime.backbone import load_backbone
from ..runtime.render import Renderer
from ..runtime.session import DEFAULT_SYSTEM_PROMPT
from ..runtime.writer import run_write
from .config import TrainConfig
from .data import (EpisodeStream, chat_chunks, class_words, plain_text_chunks, stable_seed, validation_set,
                   vocabulary_words)
from .episode import EncodedEpisode, answer_ce, answer_pass, collate_reads, distill_loss, encode_episode, \
    teacher_reads


class NaNLossError(RuntimeError):
    pass


class Trainer:
    def __init__(self, cfg: TrainConfig, model=None, tokenizer=None, progress: bool = True):
        self.cfg = cfg
        self.started = time.time()  # --max-minutes counts from here: set-up (replies, snapshots) is part of the budget
        self.world = dist.get_world_size() if dist.is_initialized() else 1
        self.rank = dist.get_rank() if dist.is_initialized() else 0
        if cfg.batch_size % (self.world * cfg.grad_accum):
            raise ValueError(f"batch_size {cfg.batch_size} must divide evenly over {self.world} ranks x "
                             f"{cfg.grad_accum} accumulation steps")
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        torch.manual_seed(cfg.seed)
        if model is None:
            model, tokenizer = load_backbone(cfg.backbone, progress=progress and self.rank == 0)
        if cfg.init_adapter:  # the recipe's adapter fields, when given, may change e.g. the write granularity
            load_adapter(model, cfg.init_adapter, config=cfg.adapter_config() if cfg.adapter else None)
        elif not hasattr(model, "delta_mem"):
            attach_delta_mem(model, cfg.adapter_config())
        self.device = resolve_device(cfg.device)
        model.to(self.device)
        self.model, self.tok = model, tokenizer
        self.dm = model.delta_mem
        self.params = [p for p in self.dm.parameters()]
        rows = self.dm.config.state_rows  # the write gates: rows [3 H r, 4 H r) of each packed W, and c_b
        self.gate_slices = [(layer.W, slice(3 * rows, 4 * rows)) for layer in self.dm.layers.values()] + \
                           [(layer.c_b, slice(None)) for layer in self.dm.layers.values()]
        # the copy path: what a token writes (W_v rows [2 H r, 3 H r)) and how a read reaches the output (U_o)
        self.copy_slices = [(layer.W, slice(2 * rows, 3 * rows)) for layer in self.dm.layers.values()] + \
                           [(layer.U["o"], slice(None)) for layer in self.dm.layers.values() if "o" in layer.U]
        self.renderer = Renderer(tokenizer, cfg.system_prompt or DEFAULT_SYSTEM_PROMPT)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.end_id = tokenizer.eos_token_id
        self.words = vocabulary_words(tokenizer) if cfg.vocab_values > 0 or cfg.blend_values > 0 else ()
        self.kin_words = class_words(model, tokenizer) if cfg.class_values > 0 else {}
        self.stream = EpisodeStream(cfg, self.words, self.kin_words)
        self.plain: list[list[int]] = []
        if cfg.preserve > 0:
            from ..data.locomo import locomo_plain_texts

            self.plain = plain_text_chunks(tokenizer, locomo_plain_texts(cfg.locomo_path, cfg.preserve_conversations),
                                           cfg.preserve_tokens)
            if not self.plain:
                raise ValueError(f"recipe key 'preserve_conversations': no {cfg.preserve_tokens}-token chunk in "
                                 f"{cfg.preserve_conversations}")
        self.chat: list[list[int]] = []
        self.long_convs: list[list[dict]] = []
        self.bank: list[MemoryState] = []  # snapshots of long conversation memories (preserve_long_memory)
        if cfg.preserve > 0 and (cfg.preserve_chat > 0 or cfg.preserve_long_memory > 0):
            from ..data.locomo import load_locomo, locomo_messages

            convs = [locomo_messages(x) for x in load_locomo(cfg.locomo_path)
                     if x["sample_id"] in cfg.preserve_conversations]
            self.long_convs = convs if cfg.preserve_long_memory > 0 else []
            self.chat = chat_chunks(self.renderer, convs, cfg.preserve_tokens)
            if not self.chat:
                raise ValueError(f"recipe key 'preserve_chat' / 'preserve_long_memory': no exchange of "
                                 f"{cfg.preserve_tokens} tokens or more in {cfg.preserve_conversations}")
        self.qa: list[list[int]] = []
        if cfg.preserve > 0 and cfg.preserve_qa > 0:
            from .questions import qa_chunks

            self.qa = qa_chunks(self.model, self.renderer, tokenizer, cfg.preserve_tokens, self.pad_id,
                                progress=progress and self.rank == 0)
            if not self.qa:
                raise ValueError(f"recipe key 'preserve_qa': no question and reply of {cfg.preserve_tokens} tokens")
        self.opt = torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        warm = max(1, int(cfg.warmup * cfg.steps))
        lr_at = lambda s: (s + 1) / warm if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, cfg.steps - warm)))  # noqa: E731
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lr_at)
        self.step = 0
        self.dropped = 0
        self.progress = progress and self.rank == 0
        if self.long_convs:
            self.refresh_memories()

    # ---- episodes -----------------------------------------------------------------------------
    def encode(self, episodes) -> list[EncodedEpisode]:
        out = []
        for ep in episodes:
            enc = encode_episode(self.renderer, ep, self.dm.config.write_granularity, self.cfg.max_write_tokens,
                                 self.cfg.max_read_tokens, self.end_id, self.cfg.recent_messages, self.cfg.answer_space)
            if enc is None:
                self.dropped += 1
            else:
                out.append(enc)
        return out

    def write(self, encoded: list[EncodedEpisode], collect_gates: bool = False):
        state = MemoryState.zeros(self.model, batch_size=len(encoded), device=self.device)
        binding = run_write(self.model, state, [e.write for e in encoded], self.pad_id, collect_gates=collect_gates)
        return state, binding

    def reads(self, encoded, window: bool = False):
        rows = [(e.window_read_ids, e.window_answer_start) if window else (e.read_ids, e.answer_start) for e in encoded]
        return collate_reads(rows, self.pad_id)

    # ---- one optimizer step -------------------------------------------------------------------
    def _autocast(self):
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return torch.autocast("cpu", enabled=False)

    def train_step(self, episodes) -> dict:
        """Forward/backward over this rank's share of `episodes` (the global batch), then one update."""
        cfg = self.cfg
        share = len(episodes) // self.world
        mine = episodes[self.rank * share:(self.rank + 1) * share]
        micro = share // cfg.grad_accum
        total = len(episodes)
        self.opt.zero_grad(set_to_none=True)
        logs = {"ce": 0.0, "ce_mis": 0.0, "kl": 0.0, "gate_sup": 0.0, "distill": 0.0, "gate": 0.0, "tokens": 0}
        distill = cfg.distill > 0
        for a in range(cfg.grad_accum):
            enc = self.encode(mine[a * micro:(a + 1) * micro])
            if not enc:
                if self.world > 1:  # still join the gate all-reduce below, or the ranks' collectives mismatch
                    dist.all_reduce(torch.zeros(2, dtype=torch.float64, device=self.device))
                continue
            with self._autocast():
                state, binding = self.write(enc, collect_gates=True)
                own = answer_pass(self.model, self.reads(enc), state, hidden=distill)
                ce = own.ce  # [b]
                loss = ce.sum() / total
                pair = len(enc) > 1  # another episode's memory exists for the mismatched terms
                mis = answer_pass(self.model, self.reads(enc), state.rolled(), hidden=distill) \
                    if pair and (distill or cfg.contrastive > 0) else None
                if distill and pair:
                    d = self.distill_loss(enc, own, mis)
                    loss = loss + cfg.distill * d.sum() / total
                    logs["distill"] += float(d.detach().sum())
                if cfg.contrastive > 0 and pair:
                    ce_mis = mis.ce
                    loss = loss + cfg.contrastive * torch.relu(cfg.contrastive_margin - (ce_mis - ce)).sum() / total
                    logs["ce_mis"] += float(ce_mis.detach().sum())
                if cfg.preserve > 0:
                    kl = self.preserve_kl(state, [stable_seed(cfg.seed, "plain", self.step, self.rank * share + a * micro + i)
                                                  for i in range(len(enc))])
                    loss = loss + cfg.preserve * kl.sum() / total
                    logs["kl"] += float(kl.detach().sum())
                if cfg.gate_supervision > 0:
                    gs = gate_supervision_loss(enc, binding)
                    loss = loss + cfg.gate_supervision * gs.sum() / total
                    logs["gate_sup"] += float(gs.detach().sum())
                gsum, gcount = binding.gate_total()
                g_all = torch.tensor([float(gsum.detach()), gcount], dtype=torch.float64, device=self.device)
                if self.world > 1:
                    dist.all_reduce(g_all)
                gmean = g_all[0] / g_all[1].clamp_min(1)
                # gradient of gate_reg * (G - target)^2 with G the mean gate over every rank's micro-batch
                loss = loss + cfg.gate_reg * 2 * float(gmean - cfg.gate_target) * gsum / float(g_all[1].clamp_min(1)) / cfg.grad_accum
            if not torch.isfinite(loss):
                raise NaNLossError(f"non-finite loss at step {self.step + 1}, rank {self.rank}, micro-batch {a} "
                                   f"(episodes {[e.question for e in mine[a * micro:(a + 1) * micro]][:3]}...)")
            loss.backward()
            logs["ce"] += float(ce.detach().sum())
            logs["gate"] += float(gmean) / cfg.grad_accum
            logs["tokens"] += sum(e.write.input_ids.shape[1] + len(e.read_ids) for e in enc)
        if self.world > 1:
            for p in self.params:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                dist.all_reduce(p.grad)
            keys = ("ce", "ce_mis", "kl", "gate_sup", "distill", "tokens")
            stats = torch.tensor([logs[k] for k in keys], dtype=torch.float64, device=self.device)
            dist.all_reduce(stats)
            logs.update(zip(keys, stats.tolist()))
        gnorm = torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip)
        self.optimizer_step()
        self.sched.step()
        self.step += 1
        return {"step": self.step, "ce": logs["ce"] / total, "ce_mismatched": logs["ce_mis"] / total if cfg.contrastive else None,
                "kl": logs["kl"] / total if cfg.preserve else None,
                "gate_sup": logs["gate_sup"] / total if cfg.gate_supervision else None,
                "distill": logs["distill"] / total if distill else None, "gate": logs["gate"], "grad_norm": float(gnorm), "lr": self.sched.get_last_lr()[0],
                "tokens": int(logs["tokens"])}

    def distill_loss(self, enc: list[EncodedEpisode], own, mis) -> torch.Tensor:
        """`distill_loss` of this micro-batch: the memory-only passes with the own and the rolled (another
        episode's) memory against the frozen backbone reading the own and that episode's history."""
        with torch.no_grad():
            t_own, t_mis = (answer_pass(self.model, collate_reads(teacher_reads(enc, self.renderer.system_ids, k), self.pad_id),
                                        hidden=True) for k in (0, 1))
        return distill_loss(own, mis, t_own, t_mis)

    def optimizer_step(self) -> None:
        """One AdamW step; with `gate_lr_scale` (`copy_lr_scale`) s != 1 the gate (copy-path) parameters move
        s times as far, which for AdamW (an update proportional to lr) is exactly a learning rate s times
        larger for them."""
        scaled = [(self.cfg.gate_lr_scale, self.gate_slices), (self.cfg.copy_lr_scale, self.copy_slices)]
        before = [[p[sl].detach().clone() for p, sl in slices] if s != 1 else [] for s, slices in scaled]
        self.opt.step()
        with torch.no_grad():
            for (s, slices), saved in zip(scaled, before):
                for (p, sl), b in zip(slices, saved):
                    p[sl] = b + s * (p[sl] - b)

    def preserve_kl(self, state: MemoryState, seeds: list[int]) -> torch.Tensor:
        """Per-row KL(frozen backbone || backbone + `state`) on the `preserve_row`s of `seeds` -> `[B]` (nats
        per token). With the memory unbound the adapted model is exactly the backbone."""
        ids = torch.tensor([self.preserve_row(s) for s in seeds], device=self.device)
        if self.cfg.preserve_plain_memory > 0:
            state = self.plain_memory(state, seeds)
        if self.bank:
            state = self.long_memory(state, seeds)
        with torch.no_grad():
            base = self.model(input_ids=ids, use_cache=False).logits.float().log_softmax(-1)
        with use_memory(self.model, state, write=False):
            mem = self.model(input_ids=ids, use_cache=False).logits.float().log_softmax(-1)
        return (base.exp() * (base - mem)).sum(-1).mean(-1)

    def preserve_row(self, seed: int) -> list[int]:
        """The preservation row for `seed`: a general question and the backbone's reply (a `preserve_qa`
        share), else a chat exchange (a `preserve_chat` share of the rest), else plain text."""
        if self.qa and random.Random(stable_seed("qa", seed)).random() < self.cfg.preserve_qa:
            return self.qa[seed % len(self.qa)]
        if self.chat and random.Random(stable_seed("chat", seed)).random() < self.cfg.preserve_chat:
            return self.chat[seed % len(self.chat)]
        return self.plain[seed % len(self.plain)]

    def plain_memory(self, state: MemoryState, seeds: list[int]) -> MemoryState:
        """`state` with a `preserve_plain_memory` share of its rows replaced by a memory written (with
        gradients, so the write gates learn it too) from 4 other plain-text chunks: the "memory of
        unrelated text" that the perplexity figure reads with."""
        rngs = [random.Random(stable_seed("plain-memory", s)) for s in seeds]
        use = torch.tensor([r.random() < self.cfg.preserve_plain_memory for r in rngs], device=self.device)
        if not bool(use.any()):
            return state
        ids = torch.tensor([sum((self.plain[r.randrange(len(self.plain))] for _ in range(4)), []) for r in rngs],
                           device=self.device)
        plain = MemoryState.zeros(self.model, len(seeds), self.device)
        with use_memory(self.model, plain, write=True):
            self.model.get_decoder()(input_ids=ids, use_cache=False)
        return replace_rows(state, use, plain)

    def refresh_memories(self) -> None:
        """(Re)write the `preserve_long_memory` snapshots with the current weights."""
        from .memories import conversation_memories

        self.bank = [m.to(self.device) for m in conversation_memories(
            self.model, self.tok, self.long_convs, self.cfg.long_memory_tokens, self.cfg.long_memory_every,
            self.renderer.system_prompt, progress=self.progress)]
        if not self.bank:
            raise ValueError(f"recipe key 'preserve_long_memory': {self.cfg.preserve_conversations} hold fewer than "
                             f"long_memory_every={self.cfg.long_memory_every} tokens")

    def long_memory(self, state: MemoryState, seeds: list[int]) -> MemoryState:
        """`state` with a `preserve_long_memory` share of its rows replaced by a snapshot of a long conversation
        memory (no gradient through its writing) continued by one chat exchange written with gradients."""
        rngs = [random.Random(stable_seed("long-memory", s)) for s in seeds]
        use = torch.tensor([r.random() < self.cfg.preserve_long_memory for r in rngs], device=self.device)
        if not bool(use.any()):
            return state
        long = MemoryState.cat([self.bank[r.randrange(len(self.bank))] for r in rngs])
        ids = torch.tensor([self.chat[r.randrange(len(self.chat))] for r in rngs], device=self.device)
        with use_memory(self.model, long, write=True):
            self.model.get_decoder()(input_ids=ids, use_cache=False)
        return replace_rows(state, use, long)

    # ---- validation -----------------------------------------------------------------------------
    @torch.no_grad()
    def validate_rows(self, episodes, batch: int = 8) -> list[tuple]:
        """`(episode, CEs)` per validated episode: mean answer CE with the own memory, another episode's
        memory, a zero state, and the history in the prompt (no memory). Episodes whose encoding is
        dropped, and a last batch of one (no other episode to mismatch), are left out."""
        pairs = [(ep, e) for ep in episodes for e in self.encode([ep])]
        rows = []
        for i in range(0, len(pairs), batch):
            part = pairs[i:i + batch]
            if len(part) < 2:
                continue
            enc = [e for _, e in part]
            state, _ = self.write(enc)
            reads = self.reads(enc)
            ces = {"own": answer_ce(self.model, reads, state),
                   "mismatched": answer_ce(self.model, reads, state.rolled()),
                   "zero": answer_ce(self.model, reads, MemoryState.zeros(self.model, len(enc), self.device)),
                   "window": answer_ce(self.model, self.reads(enc, window=True))}
            rows += [(ep, {k: float(v[j]) for k, v in ces.items()}) for j, (ep, _) in enumerate(part)]
        return rows

    def validate(self, episodes, batch: int = 8) -> dict:
        """`mean_ces` of `validate_rows`."""
        return mean_ces([c for _, c in self.validate_rows(episodes, batch)])

    # ---- checkpoints ----------------------------------------------------------------------------
    def save_checkpoint(self) -> None:
        if self.rank != 0:
            return
        final = os.path.join(self.cfg.out_dir, "checkpoint")
        os.makedirs(self.cfg.out_dir, exist_ok=True)
        tmp = tempfile.mkdtemp(dir=self.cfg.out_dir, prefix=".checkpoint-")
        save_adapter(self.model, os.path.join(tmp, "adapter"))
        torch.save({"step": self.step, "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
                    "dropped": self.dropped, "config": self.cfg.to_dict()}, os.path.join(tmp, "trainer.pt"))
        old = final + ".old"
        if os.path.exists(final):
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)

    def resume(self) -> bool:
        path = os.path.join(self.cfg.out_dir, "checkpoint")
        if not os.path.exists(os.path.join(path, "trainer.pt")):
            return False
        load_adapter(self.model, os.path.join(path, "adapter"))
        ck = torch.load(os.path.join(path, "trainer.pt"), map_location=self.device, weights_only=False)
        self.opt.load_state_dict(ck["optimizer"])
        self.sched.load_state_dict(ck["scheduler"])
        self.step, self.dropped = ck["step"], ck["dropped"]
        # continue on *this* config's schedule (a resumed run may extend `steps` or change `lr`): the loaded
        # optimizer would otherwise take its next step at the old schedule's last lr (0 at the end of a cosine)
        lrs = [self.cfg.lr * f(self.step) for f in self.sched.lr_lambdas]
        self.sched.base_lrs, self.sched._last_lr = [self.cfg.lr] * len(lrs), lrs
        for g, lr in zip(self.opt.param_groups, lrs):
            g["initial_lr"], g["lr"] = self.cfg.lr, lr
        return True

    def out_of_time(self) -> bool:
        """True once `max_minutes` of wall time have passed since the trainer was built; under DDP rank 0's clock
        decides for all ranks, so that they stop at the same step."""
        if self.cfg.max_minutes is None:
            return False
        over = torch.tensor(float((time.time() - self.started) / 60 >= self.cfg.max_minutes), device=self.device)
        if self.world > 1:
            dist.broadcast(over, src=0)
        return bool(over)

    # ---- the loop -------------------------------------------------------------------------------
    def fit(self, resume: bool = False) -> dict:
        cfg = self.cfg
        if resume and self.resume():
            if self.progress:
                print(f"[deltamem] resumed at step {self.step}")
            if self.long_convs:
                self.refresh_memories()  # snapshots written with the resumed weights
        os.makedirs(cfg.out_dir, exist_ok=True)
        log_path = os.path.join(cfg.out_dir, "log.jsonl")
        val = validation_set(cfg, cfg.eval_episodes, words=self.words, kin_words=self.kin_words)
        bar = tqdm(total=cfg.steps, initial=self.step, desc="train", disable=not self.progress)
        last = {}
        while self.step < cfg.steps:
            if self.out_of_time():
                if self.progress:
                    print(f"[deltamem] --max-minutes {cfg.max_minutes} reached at step {self.step}")
                break
            if self.long_convs and cfg.long_memory_refresh and self.step and self.step % cfg.long_memory_refresh == 0:
                self.refresh_memories()
            t0 = time.time()
            rec = self.train_step(self.stream.batch(self.step, cfg.batch_size))
            rec["seconds"] = time.time() - t0
            rec["dropped"] = self.dropped
            if self.step % cfg.eval_every == 0 or self.step == cfg.steps:
                rec["val"] = self.validate(val)
            if self.rank == 0:
                with open(log_path, "a") as f:
                    f.write(json.dumps(rec) + "\n")
            bar.set_postfix(ce=f"{rec['ce']:.3f}", gate=f"{rec['gate']:.3f}", tok_s=f"{rec['tokens'] / rec['seconds']:.0f}")
            bar.update(1)
            if self.step % cfg.checkpoint_every == 0:
                self.save_checkpoint()
            last = rec
        bar.close()
        self.save_checkpoint()
        if self.rank == 0:
            save_adapter(self.model, os.path.join(cfg.out_dir, "adapter"))
        return last


def replace_rows(state: MemoryState, use: torch.Tensor, other: MemoryState) -> MemoryState:
    """`state` with the rows where the bool `[B]` mask `use` is set taken from `other` (gradients kept)."""
    pick = use[:, None, None, None]
    return MemoryState([torch.where(pick, o, e) for o, e in zip(other.tensors, state.tensors)], state.layers,
                       state.rank, state.num_state_heads, state.fingerprint)


def gate_supervision_loss(encoded: list[EncodedEpisode], binding) -> torch.Tensor:
    """Per row `[b]`: balanced binary cross-entropy of the write gates (every layer, state head and row)
    against "this token holds a value the history states" (every fact, not only the one asked for):
    mean -log b over the values' tokens plus mean -log(1 - b) over the other written tokens. Rows
    with no value found in the history get 0."""
    T = binding.gate_tokens[0][0].shape[1]
    target = torch.zeros(len(encoded), T, dtype=torch.bool)
    for i, e in enumerate(encoded):
        if e.value is not None:
            target[i, : e.value.shape[0]] = e.value
    out = 0.0
    for gates, written in binding.gate_tokens:  # [b, T, H, r], [b, T]
        pos = (target.to(gates.device) & (written > 0)).float()
        neg = written - pos
        g = gates.float()
        lp = -(torch.log(g).mean((-1, -2)) * pos).sum(1) / pos.sum(1).clamp_min(1)
        ln = -(torch.log1p(-g).mean((-1, -2)) * neg).sum(1) / neg.sum(1).clamp_min(1)
        out = out + (lp + ln) * (pos.sum(1) > 0)
    return out / len(binding.gate_tokens)


def mean_ces(rows: list[dict]) -> dict:
    """Mean of each CE over `rows` (dicts from `Trainer.validate_rows`), with own/mismatched and the count."""
    n = len(rows)
    out = {k: sum(r[k] for r in rows) / max(n, 1) for k in ("own", "mismatched", "zero", "window")}
    out["own/mismatched"] = out["own"] / max(out["mismatched"], 1e-9)
    out["episodes"] = n
    return out


def resolve_device(name: str) -> torch.device:
    """The recipe's `device` as a torch.device: "auto" is CUDA when available, else the CPU; a bare "cuda"
    is this process's GPU under torchrun (LOCAL_RANK). A gloo process group keeps "auto" on the CPU."""
    if name == "auto":
        gloo = dist.is_initialized() and dist.get_backend() == "gloo"
        name = "cuda" if torch.cuda.is_available() and not gloo else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"recipe key 'device' is {name!r} but torch sees no CUDA device")
        if device.index is None:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def init_distributed() -> None:
    """Join the process group when launched by torchrun / accelerate (gloo on CPU, NCCL on GPU)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        if torch.cuda.is_available():  # NCCL needs each rank on its own GPU before the first collective
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
