"""The trainer: parameter groups with their own learning rates, every group moves, exact resume, the
time budget, the chain's completion marker, and validation against a mismatched memory."""

from __future__ import annotations

import json
import os

import pytest
import torch

from deltamem.train import Trainer
from deltamem.train.config import RecipeError
from train_helpers import adapter_params


def test_optimizer_takes_the_adapters_named_groups(make_cfg):
    tr = Trainer(make_cfg(optim={"lr": 1e-3, "lr_scale": {"gates": 10.0}}), progress=False)
    groups = {g["name"]: g for g in tr.opt.param_groups}
    assert set(groups) == {"project", "gates", "read"}
    assert groups["gates"]["initial_lr"] == pytest.approx(1e-2) and groups["read"]["initial_lr"] == pytest.approx(1e-3)
    named = {id(p) for g in groups.values() for p in g["params"]}
    assert named == {id(p) for p in tr.model.delta_mem.parameters()}  # every parameter, each once
    assert sum(len(g["params"]) for g in groups.values()) == len(named)


def test_a_step_moves_every_group_and_logs_every_term(make_cfg):
    tr = Trainer(make_cfg(objectives={"distill": 1.0, "answer_ce": 0.5}), progress=False)
    before = adapter_params(tr)
    rec = tr.train_step(tr.stream.batch(0, 2))
    after = adapter_params(tr)
    moved = {k.split(".")[-1] if ".U." not in k else "U" for k in before if not torch.equal(before[k], after[k])}
    assert {"W", "c_b", "U"} <= moved
    assert {"distill", "answer_ce", "gate_reg", "gate", "grad_norm", "lr"} <= set(rec)
    assert rec["distill"] > 0 and rec["reads"] >= 2


def test_prefix_passes_are_written_first_and_without_gradient(make_cfg):
    from deltamem.adapter import MemoryState
    from deltamem.runtime.writer import run_write

    tr = Trainer(make_cfg(data={"max_write_tokens": 48, "max_history_tokens": 400}), progress=False)
    enc = tr.encode(tr.stream.batch(0, 3))
    assert any(e.prefix for e in enc)
    state, _ = tr.write(enc)
    for i, e in enumerate(enc):  # each row is what writing its passes one after another gives
        ref = MemoryState.zeros(tr.model, batch_size=1)
        with torch.no_grad():
            for p in e.prefix + [e.write]:
                run_write(tr.model, ref, [p], tr.pad_id)
        for a, b in zip(state.rows(i).tensors, ref.tensors):
            torch.testing.assert_close(a.detach(), b, rtol=1e-4, atol=1e-5)
    # the last pass carries the gradient: a step still moves the adapter
    before = adapter_params(tr)
    rec = tr.train_step(tr.stream.batch(1, 2))
    assert rec["reads"] >= 1 and any(not torch.equal(before[k], v) for k, v in adapter_params(tr).items())


def test_contrast_reads_each_episode_with_another_episodes_memory(make_cfg):
    tr = Trainer(make_cfg(objectives={"distill": 0.0, "answer_ce": 1.0, "contrast": 1.0}), progress=False)
    enc = tr.encode(tr.stream.batch(0, 2))
    out = tr.forward(enc)
    assert not tr.needs_teacher and out.teacher is None
    own, other = out.student, out.mismatched
    counted = out.answer.bool() & ~out.windowed.bool()  # only the reads the hinge counts are read again
    keep = counted[own.rows]
    assert keep.any() and torch.equal(own.targets[keep], other.targets) and torch.equal(own.rows[keep], other.rows)
    assert not torch.allclose(own.logits[keep], other.logits)  # another memory, other logits
    rec = tr.train_step(tr.stream.batch(1, 2))
    assert rec["contrast"] >= 0 and "contrast" in rec
    with pytest.raises(ValueError, match="two episodes or more"):
        tr.forward(enc[:1])


def test_contrast_detach_reads_the_other_memory_without_gradient(make_cfg):
    obj = {"distill": 0.0, "answer_ce": 1.0, "contrast": 1.0}
    attached = Trainer(make_cfg(objectives=obj), progress=False)
    enc = attached.encode(attached.stream.batch(0, 2))
    assert attached.forward(enc).mismatched.logits.requires_grad
    detached = Trainer(make_cfg(objectives=obj | {"contrast_detach": True}), progress=False)
    out = detached.forward(detached.encode(detached.stream.batch(0, 2)))
    assert out.student.logits.requires_grad and not out.mismatched.logits.requires_grad
    with pytest.raises(RecipeError, match="contrast_detach must be bool"):
        make_cfg(objectives=obj | {"contrast_detach": "yes"})


def test_resume_continues_exactly(make_cfg):
    whole = Trainer(make_cfg("whole", optim={"steps": 2}), progress=False)
    whole.fit()
    part = Trainer(make_cfg("part", optim={"steps": 2}, run={"checkpoint_every": 1}), progress=False)
    part.train_step(part.stream.batch(0, 2))
    part.save_checkpoint()
    again = Trainer(make_cfg("part", optim={"steps": 2}), progress=False)
    again.fit(resume=True)
    assert again.step == 2
    a, b = adapter_params(whole), adapter_params(again)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-7, msg=k)


def test_time_budget_stops_without_marking_the_stage_done(make_cfg):
    cfg = make_cfg(run={"max_minutes": 0.0})
    tr = Trainer(cfg, progress=False)
    tr.fit()
    assert tr.step == 0
    assert os.path.exists(os.path.join(cfg.run.out_dir, "adapter", "delta_mem_config.json"))
    assert not os.path.exists(os.path.join(cfg.run.out_dir, "done.json"))
    done = make_cfg("done")
    Trainer(done, progress=False).fit()
    assert json.load(open(os.path.join(done.run.out_dir, "done.json")))["steps"] == 2


def test_validate_reports_each_term_and_the_eval_suite_against_a_mismatched_memory(make_cfg):
    tr = Trainer(make_cfg(), progress=False)
    v = tr.validate(4, batch=2)
    obj = v["objectives"]
    assert obj["episodes"] >= 2
    assert set(obj["own"]) == set(obj["mismatched"]) == {"distill", "gate_reg"}
    assert obj["own/mismatched"]["distill"] > 0
    syn = v["synthetic"]
    assert 0 <= syn["score"] <= 1 and 0 <= syn["mismatched_score"] <= 1
    assert syn["answer_ce"] > 0 and syn["mismatched_answer_ce"] > 0
