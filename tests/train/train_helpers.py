"""Constants and helpers shared by the training tests (a uniquely named module: every test folder
has its own conftest.py, so test modules must not `import conftest`)."""

from __future__ import annotations

import os

import torch

VOCAB = 49152
EOS = 2
HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))

# small everything: a training step on the tiny model takes well under a second
TINY_TRAIN = dict(
    adapter={"rank": 4, "alpha": 8.0, "heads": ["q", "o"], "update_mode": "no_decay", "gate_bias_init": -3.0},
    sources={"synthetic": 0.6, "updates": 0.2, "key_value": 0.2},
    filler_turns=[0, 2], max_write_tokens=256, max_read_tokens=96, steps=2, batch_size=2,
    eval_every=1000, eval_episodes=4, checkpoint_every=1000, seed=0,
)


def adapter_params(trainer) -> dict[str, torch.Tensor]:
    """A detached copy of every δ-mem parameter of a trainer's model."""
    return {k: v.detach().clone() for k, v in trainer.model.delta_mem.named_parameters()}
