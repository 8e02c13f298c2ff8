"""Fact-specific distillation from the frozen backbone reading the whole history in its prompt."""

import pytest
import torch


def _trainer(tiny_dir, tmp_path, **kw):
    from deltamem.train import Trainer, TrainConfig

    from train_helpers import TINY_TRAIN

    return Trainer(TrainConfig(**{**TINY_TRAIN, "backbone": tiny_dir, "out_dir": str(tmp_path / "d"), **kw}), progress=False)


def test_teacher_reads_pair_histories_with_questions(tiny_dir, tmp_path):
    """Shift 0 is exactly the history-in-prompt read of each episode; shift 1 gives row i the history of
    the episode whose memory `rolled()` gives it, with row i's own question and answer."""
    from deltamem.train.episode import teacher_reads

    tr = _trainer(tiny_dir, tmp_path)
    enc = tr.encode(tr.stream.batch(0, 3))
    sys_ids = tr.renderer.system_ids
    assert teacher_reads(enc, sys_ids, 0) == [(e.window_read_ids, e.window_answer_start) for e in enc]
    for i, (ids, start) in enumerate(teacher_reads(enc, sys_ids, 1)):
        other = enc[(i - 1) % len(enc)]
        assert ids[start:] == enc[i].read_ids[enc[i].answer_start:]
        assert ids[:start] == sys_ids + other.history_ids + enc[i].question_ids


def test_distill_loss_is_zero_for_matching_differences(tiny_dir, tmp_path):
    from deltamem.train.episode import answer_pass, collate_reads, distill_loss, teacher_reads

    tr = _trainer(tiny_dir, tmp_path)
    enc = tr.encode(tr.stream.batch(0, 4))
    state, _ = tr.write(enc)
    with torch.no_grad():
        own = answer_pass(tr.model, tr.reads(enc), state, hidden=True)
        mis = answer_pass(tr.model, tr.reads(enc), state.rolled(), hidden=True)
        t_own, t_mis = (answer_pass(tr.model, collate_reads(teacher_reads(enc, tr.renderer.system_ids, k), tr.pad_id),
                                    hidden=True) for k in (0, 1))
    assert own.layers.shape == t_own.layers.shape and own.layers.shape[0] == tr.model.config.num_hidden_layers
    assert torch.equal(own.rows, t_own.rows)
    d = distill_loss(own, mis, own, mis)
    assert torch.allclose(d, torch.zeros_like(d))
    d = distill_loss(own, mis, t_own, t_mis)
    assert d.shape == (len(enc),) and bool((d > 0).all())


def test_distill_training_lowers_the_term(tiny_dir, tmp_path):
    """A few steps with the distillation term dominant lower it on the batch trained on; it is logged."""
    tr = _trainer(tiny_dir, tmp_path, lr=3e-3, distill=10.0, contrastive=0.0, steps=8)
    eps = tr.stream.batch(0, tr.cfg.batch_size)
    recs = [tr.train_step(eps) for _ in range(8)]
    assert recs[0]["distill"] > 0 and recs[-1]["distill"] < 0.5 * recs[0]["distill"]
    from deltamem.train import TrainConfig

    with pytest.raises(ValueError, match="distill"):
        TrainConfig(distill=-1.0)
