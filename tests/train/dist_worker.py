"""Worker for test_distributed.py, launched by `torch.distributed.run` (gloo, CPU) or run alone.

`dist_worker.py <tiny backbone dir> <out dir>`: trains 2 steps (alone: with the 2 ranks' shares as 2
micro-batches) with `fit`, then one extra step on hand-made
episodes whose second half (rank 1's share under 2 ranks) cannot fit the read window, and saves the δ-mem
parameters after each phase to `<out dir>/params-rank<r>.pt`.
"""

import os
import sys

import torch

torch.set_num_threads(1)

from deltamem.train import Trainer, TrainConfig, init_distributed  # noqa: E402
from deltamem.train.episode import Episode, Query  # noqa: E402
from deltamem.train.recipes import merge  # noqa: E402
from train_helpers import TINY  # noqa: E402


def main(backbone: str, out: str) -> None:
    init_distributed()
    rank = int(os.environ.get("RANK", "0"))
    # one process takes the ranks' shares as micro-batches (the same averaging); a time budget, so that
    # the ranks' shared stop decision (a broadcast each step) runs too
    accum = 2 if int(os.environ.get("WORLD_SIZE", "1")) == 1 else 1
    cfg = TrainConfig.from_dict(merge(TINY, {"backbone": backbone, "optim": {"steps": 2, "batch_size": 4, "grad_accum": accum},
                                             "run": {"out_dir": os.path.join(out, "run"), "max_minutes": 60}}))
    tr = Trainer(cfg, progress=False)
    last = tr.fit()
    after_fit = {k: v.detach().clone() for k, v in tr.model.delta_mem.named_parameters()}
    hist = [{"role": "user", "content": "My dog is called Rex."}, {"role": "assistant", "content": "Nice."}]
    long = " ".join(["far too long"] * 80)
    eps = [Episode(hist, [Query("What is my dog called?", "Rex")]), Episode(hist, [Query("Name of the dog?", "Rex it is")]),
           Episode(hist, [Query("Q?", long)]), Episode(hist, [Query("Q2?", long)])]
    extra = tr.train_step(eps)
    after_extra = {k: v.detach().clone() for k, v in tr.model.delta_mem.named_parameters()}
    torch.save({"fit": after_fit, "extra": after_extra, "last": last, "extra_log": extra, "step": tr.step,
                "dropped": tr.dropped}, os.path.join(out, f"params-rank{rank}.pt"))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
