"""Recipes with a lineage: base recipes, overlays, and chains of stages (litgpt-style).

* A recipe file may name a `base:` recipe (a path relative to itself); its keys are merged over the
  base's, section by section, so a stage's overlay holds only what differs.
* A chain file lists `stages:`, each `{name, recipe, init}`; `init` is null (a fresh adapter on the
  bare backbone), the name of an earlier stage (its output), or an adapter folder inside the
  repository. Stage `name` trains into `<out_dir>/<name>`; a finished stage is skipped, an interrupted
  one resumes from its checkpoint, so `deltamem train CHAIN` rebuilds an adapter from the bare
  backbone in one command and can be re-run after a cut-off.
* A recipe without `stages:` is a chain of one stage.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from .config import RecipeError, TrainConfig

DONE = "done.json"


@dataclass
class Stage:
    name: str
    config: TrainConfig
    init: str | None  # null, an earlier stage's name, or a repository path (as written in the chain)


def read_yaml(path: str | os.PathLike) -> dict:
    try:
        with open(path) as f:
            data = yaml.safe_load(f) or {}
    except FileNotFoundError:
        raise RecipeError(f"recipe {os.fspath(path)} does not exist") from None
    except yaml.YAMLError as e:
        raise RecipeError(f"{os.fspath(path)}: not valid YAML ({e})") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{os.fspath(path)}: a recipe must be a YAML mapping")
    return data


def merge(base: dict, over: dict) -> dict:
    """`over` merged into a copy of `base`: mappings key by key (recursively), anything else replaced."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def load_recipe(path: str | os.PathLike, seen: tuple = ()) -> dict:
    """A recipe file with its `base:` chain merged in (the file's own keys win)."""
    path = Path(path).resolve()
    if path in seen:
        raise RecipeError(f"{path}: base recipes form a cycle")
    data = read_yaml(path)
    base = data.pop("base", None)
    if base is None:
        return data
    return merge(load_recipe(path.parent / base, seen + (path,)), data)


def set_path(data: dict, dotted: str, raw) -> None:
    """Apply an override `optim.lr=1e-4` style: the value is parsed as YAML."""
    value = yaml.safe_load(raw) if isinstance(raw, str) else raw
    keys = dotted.split(".")
    cur = data
    for k in keys[:-1]:
        nxt = cur.setdefault(k, {})
        if not isinstance(nxt, dict):
            raise RecipeError(f"override {dotted}: {k} is not a section")
        cur = nxt
    cur[keys[-1]] = value


def load_chain(path: str | os.PathLike, overrides: dict | None = None) -> tuple[str, list[Stage]]:
    """`(out_dir, stages)` of a chain file (or of a single recipe, a chain of one stage). `overrides`
    (`{"optim.steps": "2"}`) apply to every stage. Every `init` is checked to resolve."""
    path = Path(path)
    data = read_yaml(path)
    if "stages" not in data:
        recipe = load_recipe(path)
        for k, v in (overrides or {}).items():
            set_path(recipe, k, v)
        cfg = TrainConfig.from_dict(recipe, where=str(path))
        stages = [Stage(path.stem, cfg, cfg.init)]
        check_inits(stages, str(path))
        return cfg.run.out_dir, stages
    unknown = sorted(set(data) - {"out_dir", "stages", "description"})
    if unknown:
        raise RecipeError(f"{path}: unknown chain key(s) {', '.join(unknown)}; a chain has out_dir, stages, description")
    out_dir = data.get("out_dir") or f"runs/{path.stem}"
    if not isinstance(data["stages"], list) or not data["stages"]:
        raise RecipeError(f"{path}: stages must be a non-empty list of {{name, recipe, init}}")
    stages = []
    for i, st in enumerate(data["stages"]):
        where = f"{path}: stages[{i}]"
        if not isinstance(st, dict) or set(st) - {"name", "recipe", "init"} or "name" not in st or "recipe" not in st:
            raise RecipeError(f"{where} must be a mapping with name, recipe and optional init")
        recipe = load_recipe(path.parent / st["recipe"])
        if "init" in recipe:
            raise RecipeError(f"{where}: {st['recipe']} sets init; in a chain the stage's init is set by the chain")
        for k, v in (overrides or {}).items():
            set_path(recipe, k, v)
        recipe.setdefault("run", {})["out_dir"] = os.path.join(out_dir, st["name"])
        recipe["init"] = None  # resolved by `stage_init` when the stage runs
        stages.append(Stage(st["name"], TrainConfig.from_dict(recipe, where=f"{where} ({st['recipe']})"), st.get("init")))
    if len({s.name for s in stages}) != len(stages):
        raise RecipeError(f"{path}: stage names must be distinct")
    check_inits(stages, str(path))
    return out_dir, stages


def check_inits(stages: list[Stage], where: str) -> None:
    """Each `init` is null, an EARLIER stage, or an adapter folder inside the repository (not a run folder)."""
    earlier: set[str] = set()
    for s in stages:
        if s.init is not None and s.init not in earlier:
            p = Path(s.init)
            if p.is_absolute() or ".." in p.parts or p.parts[:1] == ("runs",):
                raise RecipeError(f"{where}: stage {s.name!r} init {s.init!r} points outside the repository or its "
                                  "chain: use null, an earlier stage's name or an adapter folder of the repository")
            if not (p / "delta_mem_config.json").exists():
                raise RecipeError(f"{where}: stage {s.name!r} init {s.init!r} is neither an earlier stage nor an "
                                  "adapter folder (no delta_mem_config.json there)")
        earlier.add(s.name)


def stage_init(stage: Stage, stages: list[Stage]) -> str | None:
    """The adapter folder a stage starts from (None: a fresh adapter)."""
    for s in stages:
        if s.name == stage.init:
            return os.path.join(s.config.run.out_dir, "adapter")
    return stage.init


def is_done(stage: Stage) -> bool:
    return os.path.exists(os.path.join(stage.config.run.out_dir, DONE))
