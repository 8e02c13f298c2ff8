"""Train a δ-mem adapter with the backbone frozen (docs/design.md section 5; docs/training.md).

Per micro-batch: a fresh zero state per episode, one write pass over each history (gradients flow
through the whole recurrence), then every read of the episodes with its memory bound read-only; the
recipe's objectives (`train/objectives.py`) are summed and logged by name. Data-parallel under
torchrun: each rank takes its share of every batch and gradients are averaged.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
import time

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from ..adapter import MemoryState, attach_delta_mem, load_adapter, save_adapter
from ..runtime.backbone import load_backbone
from ..runtime.render import Renderer
from ..runtime.session import DEFAULT_SYSTEM_PROMPT
from ..runtime.writer import run_write
from .config import GROUPS, TrainConfig
from .data import EpisodeStream, preservation_rows, stable_seed
from .episode import EncodedEpisode, encode_episode, grouped_pass, teacher_pass
from .objectives import StepOutputs, build_objectives, contrast_reads
from .recipes import DONE


class NaNLossError(RuntimeError):
    pass


class Trainer:
    """One stage: `Trainer(cfg).fit(resume=True)`. `init` (an adapter folder) overrides `cfg.init`."""

    def __init__(self, cfg: TrainConfig, model=None, tokenizer=None, progress: bool = True, init: str | None = None):
        self.cfg = cfg
        self.started = time.time()  # run.max_minutes counts from here: set-up is part of the budget
        self.world = dist.get_world_size() if dist.is_initialized() else 1
        self.rank = dist.get_rank() if dist.is_initialized() else 0
        if cfg.optim.batch_size % (self.world * cfg.optim.grad_accum):
            raise ValueError(f"optim.batch_size {cfg.optim.batch_size} must divide evenly over {self.world} ranks x "
                             f"{cfg.optim.grad_accum} accumulation steps")
        if cfg.run.threads:
            torch.set_num_threads(cfg.run.threads)
        torch.manual_seed(cfg.run.seed)
        self.progress = progress and self.rank == 0
        if model is None:
            model, tokenizer = load_backbone(cfg.backbone, progress=self.progress)
        init = init or cfg.init
        if init:
            load_adapter(model, init, config=cfg.adapter_config() if cfg.adapter else None)
        elif not hasattr(model, "delta_mem"):
            attach_delta_mem(model, cfg.adapter_config())
        self.device = resolve_device(cfg.run.device)
        model.to(self.device)
        self.model, self.tok, self.dm = model, tokenizer, model.delta_mem
        self.renderer = Renderer(tokenizer, DEFAULT_SYSTEM_PROMPT)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.end_id = tokenizer.eos_token_id
        self.stream = EpisodeStream(cfg.data, cfg.run.seed)
        rows = preservation_rows(tokenizer, self.renderer, cfg.data, cfg.preserve.tokens, cfg.preserve.chat,
                                 cfg.run.seed) if cfg.preserve.weight > 0 else None
        self.objectives = build_objectives(cfg, model, rows)
        self.needs_teacher = any(o.needs_teacher for o in self.objectives)
        self.needs_mismatched = any(o.needs_mismatched for o in self.objectives)
        groups = self.dm.param_groups()
        self.params = [p for name in GROUPS for p in groups[name]]
        self.opt = torch.optim.AdamW([{"params": groups[name], "lr": cfg.optim.lr * cfg.optim.lr_scale.get(name, 1.0),
                                       "name": name} for name in GROUPS], weight_decay=0.0)
        steps, warm = cfg.optim.steps, max(1, int(cfg.optim.warmup * cfg.optim.steps))
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda s: (s + 1) / warm if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, steps - warm))))
        self.step = 0
        self.dropped = 0

    # ---- one optimizer step -------------------------------------------------------------------
    def encode(self, episodes) -> list[EncodedEpisode]:
        d = self.cfg.data
        out = []
        for ep in episodes:
            enc = encode_episode(self.renderer, ep, self.dm.config.write_granularity, d.max_write_tokens,
                                 d.max_read_tokens, self.end_id, d.max_history_tokens)
            self.dropped += enc is None
            out += [enc] if enc is not None else []
        return out

    def write(self, enc: list[EncodedEpisode]) -> tuple[MemoryState, object]:
        """A fresh memory per episode: its prefix passes without gradient, then its last pass with it.
        Returns `(state, binding of the last pass)`."""
        state = MemoryState.zeros(self.model, batch_size=len(enc), device=self.device)
        with torch.no_grad():
            for j in range(max(len(e.prefix) for e in enc)):
                idx = [i for i, e in enumerate(enc) if len(e.prefix) > j]
                part = state.rows(idx)
                run_write(self.model, part, [enc[i].prefix[j] for i in idx], self.pad_id)
                state.assign_rows(idx, part)
        binding = run_write(self.model, state, [e.write for e in enc], self.pad_id, collect_gates=True)
        return state, binding

    def _autocast(self):
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return torch.autocast("cpu", enabled=False)

    def forward(self, enc: list[EncodedEpisode], state: MemoryState | None = None, binding=None,
                mismatched: bool = True) -> StepOutputs:
        """Write each episode's history into a fresh state (unless `state` is given), then run every read
        with its episode's memory, the teacher's reads when an objective needs them, and (unless
        `mismatched` is False) the reads with another episode's memory when an objective needs them."""
        if state is None:
            state, binding = self.write(enc)
        owner = [i for i, e in enumerate(enc) for _ in e.reads]
        reads = [r for e in enc for r in e.reads]
        rows = [(r.student, r.student_start) for r in reads]
        # windowed reads are long, memory-only ones short: two batches pad less than one
        groups = [[j for j, r in enumerate(reads) if r.windowed == w] for w in (False, True)]
        student = grouped_pass(self.model, rows, groups, state.rows(owner), self.pad_id)
        teacher = other = None
        if self.needs_teacher:
            with torch.no_grad():
                teacher = teacher_pass(self.model, enc, self.pad_id)
        answer, windowed = torch.tensor([r.answer for r in reads]), torch.tensor([r.windowed for r in reads])
        if mismatched and self.needs_mismatched:
            if len(enc) < 2:
                raise ValueError("objectives.contrast needs two episodes or more per micro-batch "
                                 "(optim.batch_size / ranks / optim.grad_accum >= 2)")
            # only the reads `Contrast` counts; the other rows stay empty
            counted = contrast_reads(answer, windowed).nonzero()[:, 0].tolist()
            with torch.no_grad() if self.cfg.objectives.contrast_detach else contextlib.nullcontext():
                other = grouped_pass(self.model, rows, [counted], state.rolled().rows(owner), self.pad_id)
        return StepOutputs(student, teacher, answer, binding, state, other, windowed)

    def train_step(self, episodes) -> dict:
        """Forward/backward over this rank's share of `episodes` (the global batch), then one update."""
        o = self.cfg.optim
        share = len(episodes) // self.world
        mine = episodes[self.rank * share:(self.rank + 1) * share]
        micro = share // o.grad_accum
        self.opt.zero_grad(set_to_none=True)
        logs = {t.name: 0.0 for t in self.objectives} | {"gate": 0.0, "tokens": 0, "reads": 0}
        for a in range(o.grad_accum):
            enc = self.encode(mine[a * micro:(a + 1) * micro])
            if not enc:
                continue
            with self._autocast():
                out = self.forward(enc)
                terms = {t.name: t(out) for t in self.objectives}
                loss = sum(t.weight * terms[t.name] for t in self.objectives) / o.grad_accum
            if not torch.isfinite(loss):
                raise NaNLossError(f"non-finite loss at step {self.step + 1}, rank {self.rank}, micro-batch {a}: "
                                   + ", ".join(f"{k}={float(v):.4g}" for k, v in terms.items()))
            loss.backward()
            for k, v in terms.items():
                logs[k] += float(v.detach()) / o.grad_accum
            logs["gate"] += float(out.binding.gate_mean().detach()) / o.grad_accum
            logs["tokens"] += sum(e.write.input_ids.shape[1] + sum(len(r.student) for r in e.reads) for e in enc)
            logs["reads"] += out.student.batch_size
        if self.world > 1:
            for p in self.params:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                dist.all_reduce(p.grad)
                p.grad /= self.world
            keys = [k for k in logs]
            stats = torch.tensor([logs[k] for k in keys], dtype=torch.float64, device=self.device)
            dist.all_reduce(stats)
            logs = {k: v / (self.world if k not in ("tokens", "reads") else 1) for k, v in zip(keys, stats.tolist())}
        gnorm = torch.nn.utils.clip_grad_norm_(self.params, o.grad_clip)
        self.opt.step()
        self.sched.step()
        self.step += 1
        return {"step": self.step, **logs, "grad_norm": float(gnorm), "lr": self.sched.get_last_lr()[0]}

    # ---- validation -----------------------------------------------------------------------------
    @torch.no_grad()
    def validate(self, n: int | None = None, batch: int = 4) -> dict:
        """Two views, each against a mismatched memory (another conversation's), so that what improves
        equally with any memory shows as a ratio near 1:

        * `objectives`: each term on held-out episodes of the recipe's own data (a seed training never draws);
        * `synthetic`: `deltamem eval synthetic` (held-out names, values and phrasings of another generator)
          memory-only and mismatched, through the evaluation's own code path: score and answer CE.
        """
        from ..eval import evaluate, heldout_conversations

        n = n or self.cfg.run.eval_conversations
        enc = self.encode([self.stream.episode(stable_seed("validation", self.cfg.run.seed, i)) for i in range(n)])
        parts = [enc[i:i + batch] for i in range(0, len(enc), batch) if len(enc[i:i + batch]) >= 2]
        sums: dict = {"own": {}, "mismatched": {}}
        for part in parts:
            state, binding = self.write(part)
            for name, st in (("own", state), ("mismatched", state.rolled())):
                out = self.forward(part, st, binding, mismatched=False)  # this loop is the mismatched view
                for t in self.objectives:
                    if t.name != "preserve" and not t.needs_mismatched:
                        sums[name][t.name] = sums[name].get(t.name, 0.0) + float(t(out)) * len(part)
        count = sum(map(len, parts))
        res = {k: {t: v / max(count, 1) for t, v in d.items()} for k, d in sums.items()}
        res["own/mismatched"] = {t: res["own"][t] / max(res["mismatched"][t], 1e-9) for t in res["own"]}
        res["episodes"] = count
        convs = heldout_conversations(n, seed=self.cfg.run.seed)
        folder = os.path.join(self.cfg.run.out_dir, "validation")
        syn = {c: evaluate(self.model, self.tok, "synthetic", convs, "delta-mem", c, out=folder, max_new_tokens=16)
               for c in ("memory-only", "mismatched")}
        own, mis = syn["memory-only"], syn["mismatched"]
        return {"objectives": res, "synthetic": {"score": own["score"], "mismatched_score": mis["score"],
                                                 "answer_ce": own["answer_ce"], "mismatched_answer_ce": mis["answer_ce"]}}

    # ---- checkpoints ----------------------------------------------------------------------------
    def save_checkpoint(self) -> None:
        if self.rank != 0:
            return
        out = self.cfg.run.out_dir
        final = os.path.join(out, "checkpoint")
        os.makedirs(out, exist_ok=True)
        tmp = tempfile.mkdtemp(dir=out, prefix=".checkpoint-")
        save_adapter(self.model, os.path.join(tmp, "adapter"))
        torch.save({"step": self.step, "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
                    "dropped": self.dropped, "config": self.cfg.to_dict()}, os.path.join(tmp, "trainer.pt"))
        old = final + ".old"
        if os.path.exists(final):
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)

    def resume(self) -> bool:
        path = os.path.join(self.cfg.run.out_dir, "checkpoint")
        if not os.path.exists(os.path.join(path, "trainer.pt")):
            return False
        load_adapter(self.model, os.path.join(path, "adapter"))
        ck = torch.load(os.path.join(path, "trainer.pt"), map_location=self.device, weights_only=False)
        self.opt.load_state_dict(ck["optimizer"])
        self.sched.load_state_dict(ck["scheduler"])
        self.step, self.dropped = ck["step"], ck["dropped"]
        return True

    def out_of_time(self) -> bool:
        """True once `run.max_minutes` have passed since set-up; under DDP rank 0's clock decides for all."""
        if self.cfg.run.max_minutes is None:
            return False
        over = torch.tensor(float((time.time() - self.started) / 60 >= self.cfg.run.max_minutes), device=self.device)
        if self.world > 1:
            dist.broadcast(over, src=0)
        return bool(over)

    # ---- the loop -------------------------------------------------------------------------------
    def fit(self, resume: bool = False) -> dict:
        """Train to `optim.steps` (or until `run.max_minutes`); saves `adapter/` and, when every step
        ran, `done.json`. Returns the last log record."""
        cfg = self.cfg
        if resume and self.resume() and self.progress:
            print(f"[deltamem] {cfg.run.out_dir}: resumed at step {self.step}")
        os.makedirs(cfg.run.out_dir, exist_ok=True)
        log_path = os.path.join(cfg.run.out_dir, "log.jsonl")
        bar = tqdm(total=cfg.optim.steps, initial=self.step, desc=f"train {os.path.basename(cfg.run.out_dir)}",
                   disable=not self.progress)
        last: dict = {}
        while self.step < cfg.optim.steps:
            if self.out_of_time():
                if self.progress:
                    print(f"[deltamem] run.max_minutes {cfg.run.max_minutes} reached at step {self.step}")
                break
            t0 = time.time()
            rec = self.train_step(self.stream.batch(self.step, cfg.optim.batch_size))
            rec["seconds"] = time.time() - t0
            rec["dropped"] = self.dropped
            if self.step % cfg.run.eval_every == 0 or self.step == cfg.optim.steps:
                rec["val"] = self.validate()
            if self.rank == 0:
                with open(log_path, "a") as f:
                    f.write(json.dumps(rec) + "\n")
            bar.set_postfix({t.name: f"{rec[t.name]:.3f}" for t in self.objectives} | {"gate": f"{rec['gate']:.3f}"})
            bar.update(1)
            if self.step % cfg.run.checkpoint_every == 0:
                self.save_checkpoint()
            last = rec
        bar.close()
        self.save_checkpoint()
        if self.rank == 0:
            save_adapter(self.model, os.path.join(cfg.run.out_dir, "adapter"))
            if self.step >= cfg.optim.steps:
                with open(os.path.join(cfg.run.out_dir, DONE), "w") as f:
                    json.dump({"steps": self.step, "last": last}, f)
        return last


def resolve_device(name: str) -> torch.device:
    """`run.device` as a torch.device: "auto" is CUDA when available, else the CPU; a bare "cuda" is this
    process's GPU under torchrun (LOCAL_RANK). A gloo process group keeps "auto" on the CPU."""
    if name == "auto":
        gloo = dist.is_initialized() and dist.get_backend() == "gloo"
        name = "cuda" if torch.cuda.is_available() and not gloo else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"run.device is {name!r} but torch sees no CUDA device")
        if device.index is None:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def init_distributed() -> None:
    """Join the process group when launched by torchrun / accelerate (gloo on CPU, NCCL on GPU)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        if torch.cuda.is_available():  # NCCL needs each rank on its own GPU before the first collective
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
