"""The `deltamem` command line. Each command is a typed function; its docstring is its help."""

from __future__ import annotations

import argparse
import inspect
import json
import os
import sys
import typing
from pathlib import Path


def _session_dir(name: str) -> Path:
    root = Path(os.environ.get("DELTAMEM_HOME", Path.home() / ".deltamem")) / "sessions"
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"session name must be a plain name, got {name!r}")
    return root / name


def _open_session(name: str, backbone: str | None, adapter: str | None, window: int | None,
                  must_exist: bool = False):
    from .runtime.model_setup import load_model
    from .runtime.session import STATE_FILE, MemorySession

    d = _session_dir(name)  # bad names fail before the (slow) model load
    if must_exist and not (d / STATE_FILE).exists():
        raise FileNotFoundError(f"no session {name!r} in {d.parent} (write to it or chat in it first)")
    model, tok, note = load_model(backbone, adapter)
    print(f"[deltamem] {note}", file=sys.stderr)
    overrides = {} if window is None else {"window_tokens": window}
    if (d / STATE_FILE).exists():
        return MemorySession.load(d, model, tok, progress=True, **overrides), d
    return MemorySession(model, tok, progress=True, **overrides), d


def demo(backbone: str | None = None, adapter: str | None = None, max_new_tokens: int = 24) -> None:
    """Write a short multi-session conversation into memory, then answer questions about it with no
    memory, with the memory only, and with the full transcript in the prompt."""
    from .runtime.demo import run_demo
    from .runtime.model_setup import load_model

    model, tok, note = load_model(backbone, adapter)
    run_demo(model, tok, note, max_new_tokens=max_new_tokens)


def chat(session: str = "default", window: int | None = None, adapter: str | None = None,
         backbone: str | None = None, max_new_tokens: int = 128) -> None:
    """Interactive chat whose memory persists in a session directory between runs.
    Commands: /reset, /stats, /save, /quit."""
    sess, d = _open_session(session, backbone, adapter, window)
    print(f"session {session!r} ({d}); {sess.stats()['turns']} turns in memory. /quit to leave.")
    while True:
        try:
            text = input("you> ").strip()
        except (EOFError, KeyboardInterrupt):
            print()
            break
        if not text:
            continue
        if text == "/quit":
            break
        if text == "/reset":
            sess.reset()
            sess.save(d)
            print("memory cleared")
            continue
        if text == "/stats":
            print(json.dumps(sess.stats()))
            continue
        if text == "/save":
            sess.save(d)
            print(f"saved to {d}")
            continue
        print("bot> ", end="", flush=True)
        for piece in sess.stream_chat(text, max_new_tokens=max_new_tokens):
            print(piece, end="", flush=True)
        print()
        sess.save(d)
    sess.save(d)


def write(file: str, session: str = "default", conversation: str | None = None, adapter: str | None = None,
          backbone: str | None = None) -> None:
    """Write a JSON file of messages (or a LoCoMo conversation) into a session's memory."""
    from .data import read_messages_file

    messages = read_messages_file(file, conversation)
    sess, d = _open_session(session, backbone, adapter, None)
    n = sess.write(messages)
    sess.save(d)
    print(json.dumps({"session": session, "messages": len(messages), "tokens_written": n, **sess.stats()}))


def ask(question: str, session: str = "default", window: int | None = None, adapter: str | None = None,
        backbone: str | None = None, max_new_tokens: int = 64) -> None:
    """Answer a question from a session's memory, read-only (the memory is unchanged)."""
    sess, _ = _open_session(session, backbone, adapter, window, must_exist=True)
    print(sess.ask(question, max_new_tokens=max_new_tokens))


def train(config: str, overrides: list[str] | None = None, resume: bool = True) -> None:
    """Train an adapter from a recipe chain or a single recipe (configs/train/*.yaml): the chain's stages
    run in order, a finished stage is skipped and an interrupted one resumes from its checkpoint (pass
    --no-resume to start over). `--set key=value` overrides every stage (e.g. `--set optim.steps=50
    --set run.device=cuda`). Under torchrun the same command runs data-parallel."""
    from .train import init_distributed, train_chain

    init_distributed()
    adapter = train_chain(config, _pairs(overrides), resume=resume)
    print(json.dumps({"adapter": adapter, "complete": adapter is not None}))


def _pairs(overrides: list[str] | None) -> dict[str, str]:
    """`["key=value", ...]` -> `{key: value}`, naming any item without `=`."""
    pairs = {}
    for item in overrides or []:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like key=value")
        k, v = item.split("=", 1)
        pairs[k] = v
    return pairs


from .bench.serve import bench  # noqa: E402  (these modules import the server packages only when run)
from .serve.cli import serve  # noqa: E402

COMMANDS = [demo, chat, write, ask, train, serve, bench]


# ---- argparse from signatures ----------------------------------------------------------------
def _add_command(sub, fn) -> None:
    doc = inspect.getdoc(fn) or ""
    p = sub.add_parser(fn.__name__.replace("_", "-"), help=doc.split("\n")[0], description=doc)
    hints = typing.get_type_hints(fn)
    for name, param in inspect.signature(fn).parameters.items():
        typ = hints.get(name, str)
        args = typing.get_args(typ)
        base = next((a for a in args if a is not type(None)), typ) if args else typ
        if param.default is inspect.Parameter.empty:
            p.add_argument(name, type=base)
        elif typing.get_origin(base) is list:
            p.add_argument("--set", dest=name, action="append", default=param.default, metavar="KEY=VALUE")
        elif base is bool:
            p.add_argument(f"--{name.replace('_', '-')}", action=argparse.BooleanOptionalAction, default=param.default)
        else:
            p.add_argument(f"--{name.replace('_', '-')}", type=base, default=param.default,
                           help=f"(default: {param.default})")
    p.set_defaults(_fn=fn)


def build_parser(commands=None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="deltamem", description="δ-mem: compact online memory for frozen LMs")
    sub = parser.add_subparsers(title="commands", required=True)
    for fn in commands or COMMANDS:
        _add_command(sub, fn)
    from .eval.cli import add_parser as add_eval_parser  # `deltamem eval SUITE ...`, `deltamem eval report DIR...`
    add_eval_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = vars(build_parser().parse_args(argv))
    fn = args.pop("_fn")
    try:
        fn(**args)
    except (ValueError, OSError) as e:  # OSError: missing/unreadable files, directories given as files
        print(f"deltamem {fn.__name__}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
