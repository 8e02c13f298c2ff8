"""`train_chain`: run a recipe chain's stages in order, each resuming from its checkpoint."""

from __future__ import annotations

import os

from .recipes import is_done, load_chain, stage_init
from .trainer import Trainer


def train_chain(path: str, overrides: dict | None = None, resume: bool = True, load_model=None,
                progress: bool = True) -> str | None:
    """Train every unfinished stage of the chain (or single recipe) at `path`; returns the last stage's
    adapter folder, or None when a stage stopped early (its `run.max_minutes` spent: run again to go on).

    `load_model()` -> `(model, tokenizer)` gives each stage a fresh backbone (default: the recipe's).
    """
    _, stages = load_chain(path, overrides)
    for stage in stages:
        adapter = os.path.join(stage.config.run.out_dir, "adapter")
        if resume and is_done(stage):
            if progress:
                print(f"[deltamem] stage {stage.name}: done ({adapter})")
            continue
        model, tok = load_model() if load_model else (None, None)
        trainer = Trainer(stage.config, model, tok, progress=progress, init=stage_init(stage, stages))
        trainer.fit(resume=resume)
        if not is_done(stage):
            if progress:
                print(f"[deltamem] stage {stage.name} stopped at step {trainer.step} of {stage.config.optim.steps}; "
                      "run the same command again to resume")
            return None
    return os.path.join(stages[-1].config.run.out_dir, "adapter")
