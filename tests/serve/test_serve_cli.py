"""`deltamem serve` options, keys files, the loopback rule, and that no key reaches the logs."""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest

import serve_helpers as h
from deltamem import cli
from deltamem.serve.auth import KeyRing, is_loopback, key_hash


def test_serve_help_lists_its_options(capsys):
    with pytest.raises(SystemExit):
        cli.main(["serve", "--help"])
    out = capsys.readouterr().out
    for opt in ("--host", "--port", "--db", "--adapter", "--backbone", "--api-keys", "--max-body-bytes",
                "--max-prompt-tokens", "--max-batch", "--replicas"):
        assert opt in out


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.5", "::", "example.com"])
def test_refuses_public_hosts_without_keys(host, monkeypatch, capsys):
    monkeypatch.setattr("deltamem.runtime.model_setup.load_model", lambda *a, **k: pytest.fail("model loaded"))
    assert cli.main(["serve", "--host", host]) == 2
    assert "--api-keys" in capsys.readouterr().err


def test_loopback_hosts():
    assert all(is_loopback(x) for x in ("127.0.0.1", "127.5.0.1", "::1", "[::1]", "localhost"))
    assert not any(is_loopback(x) for x in ("0.0.0.0", "10.0.0.1", "::", "host"))


def test_keys_file(tmp_path):
    p = tmp_path / "keys"
    p.write_text("# comment\n\nacme:key-acme-123456\nglobex: key-globex-456789 \n")
    ring = KeyRing.from_file(p)
    assert ring.hashes == {key_hash("key-acme-123456"): "acme", key_hash("key-globex-456789"): "globex"}
    assert ring.tenant("Bearer key-globex-456789") == "globex" and ring.tenant("bearer key-acme-123456") == "acme"
    for bad in (None, "", "Bearer", "Bearer ", "Bearer key-acme-12345", "Token key-acme-123456"):
        assert ring.tenant(bad) is None
    assert KeyRing().tenant(None) == "default"
    for text in ("acme\n", "acme:short\n", "bad name:key-123456789\n", "", "a:key-123456789\nb:key-123456789\n"):
        p.write_text(text)
        with pytest.raises(ValueError) as e:
            KeyRing.from_file(p)
        assert "key-123456789" not in str(e.value)


def test_no_key_in_the_server_output(keys_file, tmp_path):
    port = h.free_port()
    proc = h.start_server("sqlite:///" + str(tmp_path / "k.db"), port, keys_file)
    try:
        h.wait_up(proc, port)
        base = f"http://127.0.0.1:{port}"
        httpx.get(base + "/v1/models", headers={"Authorization": "Bearer not-a-real-key-42"})
        httpx.post(base + "/v1/chat/completions", headers={"Authorization": f"Bearer {h.KEYS['acme']}"},
                   json={"model": h.MODEL, "user": "u", "max_tokens": 2, "messages": [{"role": "user", "content": "x"}]})
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=60)
    text = err.decode()
    assert "serving" in text and "API keys for 2 tenants" in text
    for secret in (*h.KEYS.values(), "not-a-real-key-42", *(key_hash(k) for k in h.KEYS.values())):
        assert secret not in text


def test_core_import_needs_no_server_packages():
    code = ("import sys; sys.modules.update({m: None for m in ('fastapi', 'uvicorn', 'sqlalchemy', 'starlette')});"
            "import deltamem, deltamem.cli, deltamem.runtime;"
            "from deltamem.serve import require_extra\n"
            "try: require_extra()\n"
            "except ImportError as e: print('ok' if \"pip install 'deltamem[serve]'\" in str(e) else e)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
