"""Each loss term on hand-made passes: what it measures, and that it can fail (be nonzero)."""

from __future__ import annotations

import torch

from deltamem.train.episode import TargetPass
from deltamem.train.objectives import AnswerCE, Contrast, Distill, GateReg, StepOutputs, build_objectives


def _pass(logits, targets, rows, B):
    return TargetPass(logits, torch.tensor(targets), torch.tensor(rows), B)


class _Binding:
    def __init__(self, mean):
        self.mean = torch.tensor(mean)

    def gate_mean(self):
        return self.mean


def test_distill_is_zero_when_student_matches_teacher_and_is_the_mean_row_kl_otherwise():
    torch.manual_seed(0)
    t = torch.randn(5, 11)
    rows = [0, 0, 1, 1, 1]
    same = StepOutputs(_pass(t.clone(), [1] * 5, rows, 2), _pass(t, [1] * 5, rows, 2), torch.tensor([1, 0]), None, None)
    assert float(Distill(1.0)(same)) < 1e-6
    s = torch.randn(5, 11, requires_grad=True)
    out = StepOutputs(_pass(s, [1] * 5, rows, 2), _pass(t, [1] * 5, rows, 2), torch.tensor([1, 0]), None, None)
    loss = Distill(1.0)(out)
    pt, ls = t.log_softmax(-1), s.log_softmax(-1)
    kl = (pt.exp() * (pt - ls)).sum(-1)
    # each read's first position (the teacher's turn-format choice) is left out
    assert torch.allclose(loss, (kl[1] + kl[3:].mean()) / 2)
    loss.backward()
    assert s.grad.abs().sum() > 0
    assert s.grad[0].abs().sum() == 0 and s.grad[2].abs().sum() == 0 and s.grad[1].abs().sum() > 0


def test_distill_leaves_out_the_first_token_of_answers_and_continuations_alike():
    torch.manual_seed(1)
    t, s = torch.randn(6, 7), torch.randn(6, 7)
    rows = [0, 0, 0, 1, 1, 2]
    pt, ls = t.log_softmax(-1), s.log_softmax(-1)
    kl = (pt.exp() * (pt - ls)).sum(-1)
    # a one-token read (row 2) keeps nothing and counts as 0 in the mean over reads
    want = (kl[1:3].mean() + kl[4:5].mean() + 0) / 3
    for answer in ([0, 0, 0], [1, 1, 1], [1, 0, 1]):
        out = StepOutputs(_pass(s, [1] * 6, rows, 3), _pass(t, [1] * 6, rows, 3), torch.tensor(answer), None, None)
        assert torch.allclose(Distill(1.0)(out), want)


def test_target_pass_first_marks_each_rows_first_position():
    p = _pass(torch.zeros(5, 3), [0] * 5, [0, 0, 1, 2, 2], 3)
    assert p.first().tolist() == [True, False, True, True, False]


def test_answer_ce_averages_over_answer_reads_only():
    logits = torch.zeros(4, 3)
    logits[0, 2] = logits[1, 2] = 5.0  # read 0 predicts its targets well; read 1 (no answer) badly
    out = StepOutputs(_pass(logits, [2, 2, 0, 0], [0, 0, 1, 1], 2), None, torch.tensor([True, False]), None, None)
    expected = torch.nn.functional.cross_entropy(logits[:2], torch.tensor([2, 2]))
    assert torch.allclose(AnswerCE(1.0)(out), expected)
    none = StepOutputs(_pass(logits, [2, 2, 0, 0], [0, 0, 1, 1], 2), None, torch.tensor([False, False]), None, None)
    assert float(AnswerCE(1.0)(none)) == 0.0


def test_contrast_is_the_hinge_of_own_over_mismatched_answer_ce_on_answer_reads():
    rows, targets = [0, 0, 1, 1], [2, 2, 0, 0]
    sure = torch.zeros(4, 3)
    sure[:, 2] = sure[2:, 0] = 6.0  # reads 0 and 1 both predict their targets well
    sure[2:, 2] = 0.0
    vague = torch.zeros(4, 3)  # uniform: CE log 3
    answered = torch.tensor([True, True])
    # own memory better than another's by more than the margin: nothing to gain
    won = StepOutputs(_pass(sure, targets, rows, 2), None, answered, None, None, _pass(vague, targets, rows, 2))
    assert float(Contrast(1.0, 0.5)(won)) == 0.0
    # a prior any memory gives (own == mismatched) costs exactly the margin
    tie = StepOutputs(_pass(sure, targets, rows, 2), None, answered, None, None, _pass(sure.clone(), targets, rows, 2))
    assert abs(float(Contrast(1.0, 0.5)(tie)) - 0.5) < 1e-6
    # own worse than mismatched: margin + the gap, and its gradient reaches the own pass
    own = vague.clone().requires_grad_(True)
    lost = StepOutputs(_pass(own, targets, rows, 2), None, torch.tensor([True, False]), None, None,
                       _pass(sure, targets, rows, 2))
    gap = torch.log(torch.tensor(3.0)) - torch.nn.functional.cross_entropy(sure[:2], torch.tensor([2, 2]))
    loss = Contrast(1.0, 0.5)(lost)
    assert torch.allclose(loss, 0.5 + gap)
    loss.backward()
    assert own.grad[:2].abs().sum() > 0 and own.grad[2:].abs().sum() == 0  # read 1 has no gold answer


def test_contrast_leaves_window_and_memory_reads_out():
    rows, targets = [0, 0, 1, 1], [2, 2, 0, 0]
    vague, sure = torch.zeros(4, 3), torch.zeros(4, 3)
    sure[:, 2] = sure[2:, 0] = 6.0
    sure[2:, 2] = 0.0
    own = vague.clone().requires_grad_(True)
    out = StepOutputs(_pass(own, targets, rows, 2), None, torch.tensor([True, True]), None, None,
                      _pass(sure, targets, rows, 2), torch.tensor([False, True]))
    gap = torch.log(torch.tensor(3.0)) - torch.nn.functional.cross_entropy(sure[:2], torch.tensor([2, 2]))
    loss = Contrast(1.0, 0.5)(out)
    assert torch.allclose(loss, 0.5 + gap)  # read 1 holds a window: its hinge is not counted
    loss.backward()
    assert own.grad[:2].abs().sum() > 0 and own.grad[2:].abs().sum() == 0
    # only windowed reads: nothing to contrast
    out.windowed = torch.tensor([True, True])
    assert float(Contrast(1.0, 0.5)(out).detach()) == 0.0


def test_gate_reg_is_the_squared_distance_to_its_target():
    out = StepOutputs(None, None, None, _Binding(0.25), None)
    assert abs(float(GateReg(0.01, 0.05)(out)) - 0.04) < 1e-7
    assert float(GateReg(0.01, 0.25)(out)) == 0.0


def test_build_objectives_takes_the_weighted_terms_in_order(make_cfg):
    cfg = make_cfg(objectives={"distill": 1.0, "answer_ce": 0.0, "gate_reg": 0.5})
    terms = build_objectives(cfg)
    assert [(t.name, t.weight) for t in terms] == [("distill", 1.0), ("gate_reg", 0.5)]
    assert terms[0].needs_teacher and not terms[1].needs_teacher
    with_contrast = build_objectives(make_cfg(objectives={"answer_ce": 1.0, "contrast": 2.0, "contrast_margin": 0.3}))
    assert [t.name for t in with_contrast] == ["distill", "answer_ce", "contrast", "gate_reg"]
    assert with_contrast[2].needs_mismatched and with_contrast[2].margin == 0.3


def test_preserve_is_zero_without_memory_and_positive_with_one(make_cfg, locomo_file):
    from deltamem.adapter import MemoryState
    from deltamem.train import Trainer

    cfg = make_cfg(data={"locomo_path": locomo_file, "locomo_conversations": ["conv-x"]},
                   preserve={"weight": 1.0, "tokens": 16})
    tr = Trainer(cfg, progress=False)
    pres = [t for t in tr.objectives if t.name == "preserve"][0]
    zero = MemoryState.zeros(tr.model, batch_size=2)
    assert float(pres(StepOutputs(None, None, None, None, zero)).detach()) < 1e-6
    full = MemoryState([torch.randn_like(t) * 3 for t in zero.tensors], zero.layers, zero.rank,
                       zero.num_state_heads, zero.fingerprint)
    assert float(pres(StepOutputs(None, None, None, None, full)).detach()) > 1e-4
