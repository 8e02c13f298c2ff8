"""The trainer on a tiny random llama: updates only δ-mem, logs, checkpoints, resumes exactly, stops on NaN."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch

import deltamem.train.trainer as trainer_mod
from deltamem.adapter import load_adapter
from deltamem.runtime.backbone import load_backbone
from deltamem.train import Trainer
from deltamem.train.data import validation_set
from deltamem.train.trainer import NaNLossError

from train_helpers import adapter_params


def _backbone(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items() if not k.startswith("delta_mem.")}


def _files(d) -> dict[str, bytes]:
    out = {}
    for root, _, names in os.walk(d):
        for n in names:
            p = os.path.join(root, n)
            out[os.path.relpath(p, d)] = open(p, "rb").read()
    return out


def _log(out_dir) -> list[dict]:
    with open(os.path.join(out_dir, "log.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_fit_updates_only_delta_mem_and_writes_outputs(make_cfg):
    cfg = make_cfg(steps=3, batch_size=4, checkpoint_every=2, eval_every=2, contrastive=0.5)
    tr = Trainer(cfg, progress=False)
    assert all(not p.requires_grad for n, p in tr.model.named_parameters() if not n.startswith("delta_mem."))
    assert all(p.requires_grad for p in tr.params) and tr.params
    before_bb, before_dm = _backbone(tr.model), adapter_params(tr)
    last = tr.fit()
    assert tr.step == 3 and last["step"] == 3
    after_bb, after_dm = _backbone(tr.model), adapter_params(tr)
    assert before_bb.keys() == after_bb.keys()
    for k in before_bb:
        assert torch.equal(before_bb[k], after_bb[k]), f"backbone weight {k} changed"
    changed = [k for k in before_dm if not torch.equal(before_dm[k], after_dm[k])]
    assert len(changed) >= len(before_dm) // 2, changed
    assert all(torch.isfinite(v).all() for v in after_dm.values())

    log = _log(cfg.out_dir)
    assert [r["step"] for r in log] == [1, 2, 3]
    for r in log:
        assert {"step", "ce", "gate", "lr"} <= r.keys()
        assert math.isfinite(r["ce"]) and r["ce"] > 0
        assert 0 < r["gate"] < 1 and math.isfinite(r["lr"]) and r["lr"] >= 0
        assert r["ce_mismatched"] is not None and math.isfinite(r["ce_mismatched"])
        assert r["tokens"] > 0 and r["dropped"] == 0
    assert [("val" in r) for r in log] == [False, True, True]  # eval_every=2 and the last step
    assert log[0]["lr"] > log[-1]["lr"]  # cosine decay

    ck = os.path.join(cfg.out_dir, "checkpoint")
    assert sorted(os.listdir(ck)) == ["adapter", "trainer.pt"]
    state = torch.load(os.path.join(ck, "trainer.pt"), weights_only=False)
    assert state["step"] == 3 and state["config"] == cfg.to_dict()
    assert not [n for n in os.listdir(cfg.out_dir) if n.startswith(".")]  # no temp dirs left behind
    # the final adapter loads onto a fresh backbone and reproduces the trained weights
    model, _ = load_backbone(cfg.backbone, progress=False)
    load_adapter(model, os.path.join(cfg.out_dir, "adapter"))
    for k, v in model.delta_mem.named_parameters():
        assert torch.equal(v, after_dm[k])
    load_adapter(model, os.path.join(ck, "adapter"))
    for k, v in model.delta_mem.named_parameters():
        assert torch.equal(v, after_dm[k])


def test_resume_continues_exactly(make_cfg):
    """2 steps, then resume with steps=4 == 4 steps straight (the first two lrs coincide: warmup is one
    step in both schedules, and cos(0) = 1); needs the data stream, optimizer and schedule to carry over."""
    straight = Trainer(make_cfg("straight", steps=4), progress=False)
    straight.fit()

    first = Trainer(make_cfg("resumed", steps=2), progress=False)
    first.fit()
    assert first.step == 2
    again = Trainer(make_cfg("resumed", steps=4), progress=False)
    again.fit(resume=True)
    assert again.step == 4
    assert [r["step"] for r in _log(again.cfg.out_dir)] == [1, 2, 3, 4]
    a, b = adapter_params(straight), adapter_params(again)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-6, msg=k)
    # same optimizer state and schedule position
    sa, sb = straight.opt.state_dict(), again.opt.state_dict()
    for i in sa["state"]:
        for key in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(sb["state"][i][key], sa["state"][i][key], rtol=1e-5, atol=1e-9)
        assert float(sb["state"][i]["step"]) == float(sa["state"][i]["step"]) == 4
    assert again.sched.get_last_lr() == pytest.approx(straight.sched.get_last_lr())
    assert [r["lr"] for r in _log(again.cfg.out_dir)][2:] == pytest.approx(
        [r["lr"] for r in _log(straight.cfg.out_dir)][2:])


def test_resume_without_checkpoint_starts_fresh(make_cfg):
    tr = Trainer(make_cfg(steps=1), progress=False)
    assert tr.resume() is False
    tr.fit(resume=True)
    assert tr.step == 1


def test_max_minutes_zero_stops_at_once_but_saves(make_cfg):
    cfg = make_cfg(steps=5, max_minutes=0.0)
    tr = Trainer(cfg, progress=False)
    before = adapter_params(tr)
    tr.fit()
    assert tr.step == 0
    assert os.path.exists(os.path.join(cfg.out_dir, "adapter", "adapter_model.safetensors"))
    state = torch.load(os.path.join(cfg.out_dir, "checkpoint", "trainer.pt"), weights_only=False)
    assert state["step"] == 0
    assert not os.path.exists(os.path.join(cfg.out_dir, "log.jsonl")) or not _log(cfg.out_dir)
    after = adapter_params(tr)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_validate_reports_the_four_conditions(make_cfg):
    cfg = make_cfg()
    tr = Trainer(cfg, progress=False)
    before = adapter_params(tr)
    out = tr.validate(validation_set(cfg, 4), batch=4)
    assert {"own", "mismatched", "zero", "window", "own/mismatched", "episodes"} <= out.keys()
    assert out["episodes"] == 4
    for k in ("own", "mismatched", "zero", "window"):
        assert math.isfinite(out[k]) and out[k] > 0, k
    assert out["own"] != out["zero"]  # the written memory changes the read
    assert out["own/mismatched"] == pytest.approx(out["own"] / out["mismatched"])
    assert all(torch.equal(before[k], v) for k, v in adapter_params(tr).items())  # validation trains nothing
    assert all(p.grad is None for p in tr.params)


def test_nan_loss_raises_and_keeps_the_checkpoint(make_cfg, monkeypatch):
    cfg = make_cfg("nan", steps=2, checkpoint_every=1)
    Trainer(cfg, progress=False).fit()
    ck = os.path.join(cfg.out_dir, "checkpoint")
    saved = _files(ck)
    assert {"trainer.pt", os.path.join("adapter", "adapter_model.safetensors")} <= saved.keys()
    final = _files(os.path.join(cfg.out_dir, "adapter"))
    log_before = open(os.path.join(cfg.out_dir, "log.jsonl")).read()

    real = trainer_mod.answer_pass

    def nan_pass(*a, **k):
        out = real(*a, **k)
        out.ce = out.ce * float("nan")
        return out

    monkeypatch.setattr(trainer_mod, "answer_pass", nan_pass)
    tr = Trainer(make_cfg("nan", steps=4, checkpoint_every=1), progress=False)
    with pytest.raises(NaNLossError, match=r"step 3\b"):
        tr.fit(resume=True)
    assert _files(ck) == saved  # the last good checkpoint is untouched
    assert open(os.path.join(cfg.out_dir, "log.jsonl")).read() == log_before
    assert _files(os.path.join(cfg.out_dir, "adapter")) == final


def test_same_seed_gives_identical_adapters(make_cfg):
    runs = []
    for name in ("a", "b"):
        cfg = make_cfg(name, steps=2, batch_size=2)
        Trainer(cfg, progress=False).fit()
        runs.append(_files(os.path.join(cfg.out_dir, "adapter")))
    assert runs[0] == runs[1]
    other = make_cfg("c", steps=2, batch_size=2, seed=1)
    Trainer(other, progress=False).fit()
    assert _files(os.path.join(other.out_dir, "adapter")) != runs[0]


def test_gate_lr_scale_moves_only_the_gates_further(tiny_dir, tmp_path):
    from deltamem.train import Trainer, TrainConfig

    from train_helpers import TINY_TRAIN

    moved = {}
    for scale in (1.0, 4.0):
        cfg = TrainConfig(**{**TINY_TRAIN, "backbone": tiny_dir, "out_dir": str(tmp_path / str(scale)),
                             "gate_lr_scale": scale, "contrastive": 0.0})
        tr = Trainer(cfg, progress=False)
        before = {k: v.detach().clone() for k, v in tr.model.delta_mem.named_parameters()}
        tr.train_step(tr.stream.batch(0, cfg.batch_size))
        moved[scale] = {k: v.detach() - before[k] for k, v in tr.model.delta_mem.named_parameters()}
    rows = TINY_TRAIN["adapter"]["rank"]  # H r with H = 1
    for k, d1 in moved[1.0].items():
        d4 = moved[4.0][k]
        if k.endswith(".W"):
            torch.testing.assert_close(d4[3 * rows:], 4 * d1[3 * rows:], rtol=1e-4, atol=1e-8)
            torch.testing.assert_close(d4[:3 * rows], d1[:3 * rows], rtol=1e-4, atol=1e-8)
            assert d1[3 * rows:].abs().sum() > 0
        elif k.endswith("c_b"):
            torch.testing.assert_close(d4, 4 * d1, rtol=1e-4, atol=1e-8)
        else:
            torch.testing.assert_close(d4, d1, rtol=1e-4, atol=1e-8)
    with pytest.raises(ValueError, match="gate_lr_scale"):
        TrainConfig(gate_lr_scale=0.0)


def test_copy_lr_scale_moves_only_w_v_and_u_o_further(tiny_dir, tmp_path):
    from deltamem.train import Trainer, TrainConfig

    from train_helpers import TINY_TRAIN

    moved = {}
    for scale in (1.0, 3.0):
        cfg = TrainConfig(**{**TINY_TRAIN, "backbone": tiny_dir, "out_dir": str(tmp_path / str(scale)),
                             "copy_lr_scale": scale, "contrastive": 0.0})
        tr = Trainer(cfg, progress=False)
        before = {k: v.detach().clone() for k, v in tr.model.delta_mem.named_parameters()}
        tr.train_step(tr.stream.batch(0, cfg.batch_size))
        moved[scale] = {k: v.detach() - before[k] for k, v in tr.model.delta_mem.named_parameters()}
    r = TINY_TRAIN["adapter"]["rank"]
    for k, d1 in moved[1.0].items():
        d3 = moved[3.0][k]
        if k.endswith(".W"):
            torch.testing.assert_close(d3[2 * r:3 * r], 3 * d1[2 * r:3 * r], rtol=1e-4, atol=1e-8)
            keep = torch.cat([d1[:2 * r], d1[3 * r:]]), torch.cat([d3[:2 * r], d3[3 * r:]])
            torch.testing.assert_close(keep[1], keep[0], rtol=1e-4, atol=1e-8)
        elif k.endswith("U.o"):
            assert d1.abs().sum() > 0
            torch.testing.assert_close(d3, 3 * d1, rtol=1e-4, atol=1e-8)
        else:
            torch.testing.assert_close(d3, d1, rtol=1e-4, atol=1e-8)
    with pytest.raises(ValueError, match="copy_lr_scale"):
        TrainConfig(copy_lr_scale=-1.0)


def test_init_adapter_under_the_recipes_config(tiny_dir, tmp_path):
    """A recipe may continue a saved token-write adapter as a message-write one (same shapes, same weights);
    a recipe whose shapes do not fit the saved weights is refused."""
    from deltamem.adapter import save_adapter
    from deltamem.train import Trainer, TrainConfig

    from train_helpers import TINY_TRAIN

    base = Trainer(TrainConfig(**{**TINY_TRAIN, "backbone": tiny_dir, "out_dir": str(tmp_path / "a")}), progress=False)
    with torch.no_grad():
        for p in base.model.delta_mem.parameters():
            p.normal_()
    save_adapter(base.model, tmp_path / "saved")
    ssw = {**TINY_TRAIN["adapter"], "write_granularity": "message"}
    tr = Trainer(TrainConfig(**{**TINY_TRAIN, "backbone": tiny_dir, "out_dir": str(tmp_path / "b"), "adapter": ssw,
                                "init_adapter": str(tmp_path / "saved")}), progress=False)
    assert tr.dm.config.write_granularity == "message"
    for (k, a), b in zip(base.model.delta_mem.named_parameters(), tr.dm.parameters()):
        assert torch.equal(a, b), k
    assert tr.train_step(tr.stream.batch(0, 2))["ce"] > 0
    with pytest.raises(ValueError, match="shape"):
        Trainer(TrainConfig(**{**TINY_TRAIN, "backbone": tiny_dir, "out_dir": str(tmp_path / "c"),
                               "adapter": {**ssw, "rank": 2}, "init_adapter": str(tmp_path / "saved")}), progress=False)


def test_gate_supervision_raises_the_gates_on_the_value(tiny_dir, tmp_path):
    """The supervised gates must rise on the answer's value tokens, far more than elsewhere, in a few steps;
    the loss term is logged, and message writes (no per-token gate) are refused."""
    from deltamem.train import Trainer, TrainConfig
    from deltamem.train.evaluate import gate_profile

    from train_helpers import TINY_TRAIN

    cfg = TrainConfig(**{**TINY_TRAIN, "backbone": tiny_dir, "out_dir": str(tmp_path / "gs"), "lr": 1e-2,
                         "gate_supervision": 1.0, "contrastive": 0.0, "steps": 8})
    tr = Trainer(cfg, progress=False)
    eps = tr.stream.batch(0, cfg.batch_size)
    assert all(e.value is not None for e in tr.encode(eps))
    assert any(bool(e.value.any()) for e in tr.encode(eps))
    before = gate_profile(tr, eps)
    recs = [tr.train_step(eps) for _ in range(8)]
    after = gate_profile(tr, eps)
    assert recs[0]["gate_sup"] > 0 and recs[-1]["gate_sup"] < recs[0]["gate_sup"]
    assert after["value/other"] > 1.5 * before["value/other"]
    assert after["value"] > 3 * before["value"]
    with pytest.raises(ValueError, match="gate_supervision"):
        TrainConfig(gate_supervision=1.0, adapter={"write_granularity": "message"})
    with pytest.raises(ValueError, match="gate_supervision"):
        TrainConfig(gate_supervision=-1.0)


def test_value_mask_marks_every_occurrence():
    from deltamem.train.episode import value_mask

    assert value_mask([5, 1, 2, 7, 1, 2], [1, 2]).tolist() == [False, True, True, False, True, True]
    assert not value_mask([1, 2, 3], [4]).any()
    assert not value_mask([1, 2, 3], []).any()


def test_gate_targets_cover_every_stated_value(tiny_dir, tmp_path):
    """Gate targets mark every fact a history states (and an update's old value), not only the answer:
    which fact a question asks about is unknown at write time."""
    from deltamem.train import Trainer, TrainConfig
    from deltamem.train.episode import value_mask
    from deltamem.train.sources import fact_updates, synthetic_chats

    from train_helpers import TINY_TRAIN

    tr = Trainer(TrainConfig(**{**TINY_TRAIN, "backbone": tiny_dir, "out_dir": str(tmp_path / "v")}), progress=False)
    for ep in synthetic_chats(3, 0, facts_per_episode=(3, 3), filler_turns=(0, 1)) + fact_updates(3, 1, filler_turns=(0, 1)):
        assert len(ep.values) >= 2 and ep.answer in ep.values
        enc = tr.encode([ep])[0]
        ids = enc.write.input_ids[0].tolist()
        answer_only = value_mask(ids, tr.tok(" " + ep.answer, add_special_tokens=False)["input_ids"])
        assert answer_only.any() and bool((enc.value & answer_only).eq(answer_only).all())
        assert enc.value.sum() > answer_only.sum()


def test_init_adapter_grows_state_heads(tiny_dir, tmp_path):
    """A recipe with more state heads (TSW -> MSW) starts from saved weights as its first heads: the new
    heads' corrections are zero, so every answer CE is unchanged until training moves them."""
    from deltamem.adapter import save_adapter
    from deltamem.train import Trainer, TrainConfig

    from train_helpers import TINY_TRAIN

    base = Trainer(TrainConfig(**{**TINY_TRAIN, "backbone": tiny_dir, "out_dir": str(tmp_path / "a")}), progress=False)
    with torch.no_grad():
        for p in base.model.delta_mem.parameters():
            p.normal_(std=0.2)
    save_adapter(base.model, tmp_path / "saved")
    msw = {**TINY_TRAIN["adapter"], "num_state_heads": 3}
    tr = Trainer(TrainConfig(**{**TINY_TRAIN, "backbone": tiny_dir, "out_dir": str(tmp_path / "b"), "adapter": msw,
                                "init_adapter": str(tmp_path / "saved"), "lr": 1e-2}), progress=False)
    rows = TINY_TRAIN["adapter"]["rank"]
    for (k, a), b in zip(base.model.delta_mem.named_parameters(), tr.dm.parameters()):
        if k.endswith(".W"):
            assert b.shape[0] == 3 * a.shape[0]
            for p in range(4):
                assert torch.equal(b[p * 3 * rows: p * 3 * rows + rows], a[p * rows:(p + 1) * rows]), k
        elif ".U." in k:
            assert torch.equal(b[:, :rows], a) and not b[:, rows:].any(), k
    eps = base.stream.batch(3, 4)
    for (_, x), (_, y) in zip(base.validate_rows(eps, batch=4), tr.validate_rows(eps, batch=4)):
        assert x["own"] == pytest.approx(y["own"], rel=1e-4) and x["mismatched"] == pytest.approx(y["mismatched"], rel=1e-4)
    tr.train_step(tr.stream.batch(0, 2))
    assert any(p[:, rows:].abs().sum() > 0 for k, p in tr.dm.named_parameters() if ".U." in k)


def test_max_minutes_counts_the_set_up(make_cfg):
    # the budget runs from the trainer's construction: time spent before fit() (backbone replies, memory
    # snapshots) is part of it, so a `timeout` wrapper sized to max_minutes plus a margin is not hit
    cfg = make_cfg(steps=3, max_minutes=1.0)
    tr = Trainer(cfg, progress=False)
    tr.started -= 61  # as if set-up had taken just over a minute
    tr.fit()
    assert tr.step == 0
    tr = Trainer(make_cfg(steps=1, max_minutes=1.0), progress=False)
    tr.fit()
    assert tr.step == 1
