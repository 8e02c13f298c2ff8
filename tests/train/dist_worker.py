"""Worker for test_distributed.py, launched by `torch.distributed.run` (gloo, CPU) or run alone.

`dist_worker.py <tiny backbone dir> <out dir>`: trains 2 steps with `fit`, then one extra step on hand-made
episodes whose second half (rank 1's share under 2 ranks) cannot fit the read window, and saves the δ-mem
parameters after each phase to `<out dir>/params-rank<r>.pt`.
"""

import os
import sys

import torch

torch.set_num_threads(1)

from deltamem.train import Trainer, TrainConfig, init_distributed  # noqa: E402
from deltamem.train.sources import Episode  # noqa: E402


def main(backbone: str, out: str) -> None:
    init_distributed()
    rank = int(os.environ.get("RANK", "0"))
    cfg = TrainConfig(
        backbone=backbone, out_dir=os.path.join(out, "run"), steps=2, batch_size=4, grad_accum=1, seed=0,
        adapter={"rank": 4, "alpha": 8.0, "heads": ["q", "o"], "update_mode": "no_decay", "gate_bias_init": -3.0},
        sources={"synthetic": 0.6, "updates": 0.2, "key_value": 0.2}, filler_turns=[0, 2],
        max_write_tokens=256, max_read_tokens=96, eval_every=1000, eval_episodes=2, checkpoint_every=1000,
        max_minutes=60)  # a budget, so the ranks' shared stop decision (a broadcast each step) runs too
    tr = Trainer(cfg, progress=False)
    last = tr.fit()
    after_fit = {k: v.detach().clone() for k, v in tr.model.delta_mem.named_parameters()}
    hist = [{"role": "user", "content": "My dog is called Rex."}, {"role": "assistant", "content": "Nice."}]
    eps = [Episode(hist, "What is my dog called?", "Rex"), Episode(hist, "Name of the dog?", "Rex is his name"),
           Episode(hist, "Q?", " ".join(["far too long"] * 60)), Episode(hist, "Q2?", " ".join(["too long"] * 60))]
    extra = tr.train_step(eps)
    after_extra = {k: v.detach().clone() for k, v in tr.model.delta_mem.named_parameters()}
    torch.save({"fit": after_fit, "extra": after_extra, "last": last, "extra_log": extra, "step": tr.step,
                "dropped": tr.dropped}, os.path.join(out, f"params-rank{rank}.pt"))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
