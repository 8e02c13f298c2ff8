"""Loss terms as small objects: a name, a weight, and `__call__(step) -> scalar` (mean over reads).

The trainer builds the ones a recipe weighs above zero (`build_objectives`), sums `weight * term` and
logs every term by name. A term reads what it needs from the `StepOutputs` of one micro-batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .episode import TargetPass


@dataclass
class StepOutputs:
    """What one micro-batch computed. `student`: the reads with the memory (and their window);
    `teacher`: the same target tokens read by the frozen backbone with the whole history in its prompt
    (None when no term needs it); `answer`: `[R]` bool, reads whose target is a gold answer;
    `binding`: the write pass's memory binding (its gates); `state`: the written memory `[B]`;
    `mismatched`: the student's reads with another episode's memory, on the reads `Contrast` counts only
    (None when no term needs it);
    `windowed`: `[R]` bool, reads whose prompt holds some of the history (None: none does)."""

    student: TargetPass
    teacher: TargetPass | None
    answer: torch.Tensor
    binding: object
    state: object
    mismatched: TargetPass | None = None
    windowed: torch.Tensor | None = None


class Objective:
    name = "objective"
    needs_teacher = False
    needs_mismatched = False

    def __init__(self, weight: float):
        self.weight = weight

    def __call__(self, out: StepOutputs) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(weight={self.weight})"


class Distill(Objective):
    """Context distillation: mean over reads of the per-token KL(teacher || student), where the teacher
    reads the whole history in its prompt and the student reads it from memory (plus its window).

    Every read's first target token is left out. There the teacher, fresh from a transcript whose
    every turn opens with `[date] Name:`, answers in the transcript's format: measured on training
    episodes, it puts 0.89-0.99 of its mass on `[` before a continuation or a plain chat question's
    answer (0.02 after the official LoCoMo prompt), a format no generated reply should take. The
    answer's first token is still taught by the gold-answer terms."""

    name = "distill"
    needs_teacher = True

    def __call__(self, out: StepOutputs) -> torch.Tensor:
        t = out.teacher.logits.detach().log_softmax(-1)
        s = out.student.logits.log_softmax(-1)
        kl = (t.exp() * (t - s)).sum(-1)  # [N]
        p = out.student
        return p.per_row(kl, ~p.first()).mean()


class AnswerCE(Objective):
    """Cross-entropy of the gold answer, over the reads that have one (0 when none does)."""

    name = "answer_ce"

    def __call__(self, out: StepOutputs) -> torch.Tensor:
        return answer_mean(answer_ce_per_row(out.student), out.answer)


def answer_mean(per_row: torch.Tensor, answer: torch.Tensor) -> torch.Tensor:
    """Mean of `[R]` per-read values over the reads whose target is a gold answer (0 when none is)."""
    mask = answer.to(per_row.device)
    return (per_row * mask).sum() / mask.sum().clamp_min(1)


def answer_ce_per_row(p: TargetPass) -> torch.Tensor:
    """Mean cross-entropy of each read's target tokens -> `[R]`."""
    return p.per_row(torch.nn.functional.cross_entropy(p.logits, p.targets, reduction="none"))


def contrast_reads(answer: torch.Tensor, windowed: torch.Tensor | None) -> torch.Tensor:
    """`[R]` bool: the reads `Contrast` counts, answered memory-only ones."""
    reads = answer.bool()
    return reads if windowed is None else reads & ~windowed.bool().to(reads.device)


class Contrast(Objective):
    """The own memory against another episode's, on gold answers: mean over answered memory-only reads
    of `max(0, margin + CE_own - CE_mismatched)`. A prior that any memory gives lowers both sides alike
    and earns nothing; the term falls only when this history's memory makes its answer likelier.

    Window+memory reads are left out: there the window may hold the answer, and the hinge, which
    also falls when the mismatched side rises, would teach a memory that does not fit to override
    what the window says, the one harm a memory must never do. For the same reason on memory-only reads
    (a far fact's memory looks like another's), `objectives.contrast_detach` reads the other memory
    without gradient: the hinge then falls only as this memory's answer becomes likelier."""

    name = "contrast"
    needs_mismatched = True

    def __init__(self, weight: float, margin: float):
        super().__init__(weight)
        self.margin = margin

    def __call__(self, out: StepOutputs) -> torch.Tensor:
        gap = answer_ce_per_row(out.student) - answer_ce_per_row(out.mismatched)
        return answer_mean(torch.relu(self.margin + gap), contrast_reads(out.answer, out.windowed))


class GateReg(Objective):
    """`(mean write-pass gate - target)^2` (the paper's regulariser, on the write pass)."""

    name = "gate_reg"

    def __init__(self, weight: float, target: float):
        super().__init__(weight)
        self.target = target

    def __call__(self, out: StepOutputs) -> torch.Tensor:
        return (out.binding.gate_mean() - self.target) ** 2


class Preserve(Objective):
    """KL(frozen backbone || backbone + the episode's memory) on unrelated text rows (plain text and
    chat exchanges), so a memory changes what it holds and leaves other text alone. Row `i` of a
    micro-batch reads `rows[(offset + i) % len(rows)]` with memory row `i`."""

    name = "preserve"

    def __init__(self, weight: float, model, rows: list[list[int]]):
        super().__init__(weight)
        self.model, self.rows, self.offset = model, rows, 0

    def __call__(self, out: StepOutputs) -> torch.Tensor:
        from ..adapter import use_memory

        B = out.state.batch_size
        dev = next(self.model.parameters()).device
        ids = torch.tensor([self.rows[(self.offset + i) % len(self.rows)] for i in range(B)], device=dev)
        self.offset += B
        with torch.no_grad():
            base = self.model(input_ids=ids, use_cache=False).logits.float().log_softmax(-1)
        with use_memory(self.model, out.state, write=False):
            mem = self.model(input_ids=ids, use_cache=False).logits.float().log_softmax(-1)
        return (base.exp() * (base - mem)).sum(-1).mean()


def build_objectives(cfg, model=None, preserve_rows: list[list[int]] | None = None) -> list[Objective]:
    """The terms a recipe weighs above zero, in a fixed order."""
    o = cfg.objectives
    terms: list[Objective] = []
    if o.distill > 0:
        terms.append(Distill(o.distill))
    if o.answer_ce > 0:
        terms.append(AnswerCE(o.answer_ce))
    if o.contrast > 0:
        terms.append(Contrast(o.contrast, o.contrast_margin))
    if o.gate_reg > 0:
        terms.append(GateReg(o.gate_reg, o.gate_target))
    if cfg.preserve.weight > 0:
        terms.append(Preserve(cfg.preserve.weight, model, preserve_rows or []))
    if not terms:
        raise ValueError("the recipe weighs no objective above zero: nothing to train")
    return terms
