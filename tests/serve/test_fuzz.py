"""Property-based fuzzing of every endpoint in `/openapi.json` with hypothesis: bodies drawn from the
published schemas (`from_schema`, the JSON-schema subset FastAPI emits), half of them nudged towards valid requests so that deeper code runs,
plus junk bodies and odd path ids. Zero 5xx; every error in the OpenAI shape."""

from __future__ import annotations

import json
from urllib.parse import quote

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import serve_helpers as h  # noqa: E402

IDS = st.one_of(st.sampled_from(["fuzz", "fuzz2", "u1"]), st.text(max_size=12))
JUNK = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=3),
                    max_leaves=8)


def from_schema(schema: dict, components: dict, depth: int = 0):
    """A strategy for values matching `schema` (object/array/anyOf/$ref/enum/const and scalar bounds);
    optional properties are sometimes left out, extra keys sometimes added."""
    if "$ref" in schema:
        return from_schema(components[schema["$ref"].rsplit("/", 1)[-1]], components, depth + 1)
    if "anyOf" in schema:
        return st.one_of(*(from_schema(s, components, depth) for s in schema["anyOf"]))
    if "const" in schema or "enum" in schema:
        return st.sampled_from(schema.get("enum", [schema.get("const")]))
    t = schema.get("type")
    if t == "object":
        props, required = schema.get("properties", {}), set(schema.get("required", []))
        fields = {k: from_schema(v, components, depth + 1) for k, v in props.items()}
        opt = [k for k in props if k not in required]
        return st.builds(lambda req, chosen, extra: {**req, **chosen, **extra},
                         st.fixed_dictionaries({k: fields[k] for k in required}),
                         st.fixed_dictionaries({}, optional={k: fields[k] for k in opt}),
                         st.dictionaries(st.text(max_size=6), st.integers(), max_size=1))
    if t == "array":
        items = from_schema(schema.get("items", {}), components, depth + 1) if depth < 4 else st.none()
        return st.lists(items, min_size=schema.get("minItems", 0), max_size=3)
    if t == "string":
        return st.text(max_size=40) | st.sampled_from(["", " ", "user", "assistant", "system", "text", "fuzz"])
    if t == "integer":
        return st.integers(int(schema.get("minimum", -(2**64))) - 1, int(schema.get("maximum", 2**64)) + 1)
    if t == "number":
        return st.floats(allow_nan=True) | st.floats(schema.get("minimum", -10), schema.get("maximum", 10))
    if t == "boolean":
        return st.booleans()
    if t == "null":
        return st.none()
    return JUNK


def nudge(body, valid: bool, schema_name: str):
    """Make about half of the generated bodies pass the cheap checks (model name, memory id, sizes)."""
    if not valid or not isinstance(body, dict):
        return body
    if schema_name == "ChatRequest":
        body = {**body, "model": h.MODEL, "user": "fuzz", "max_tokens": 3}
        for k in ("memory_id", "n", "stop", "max_completion_tokens"):
            body.pop(k, None)
    if "messages" in body:
        body["messages"] = [{"role": "user", "content": "fuzz says hi"}]
    if "question" in body:
        body["question"] = "what did fuzz say?"
    if "max_tokens" in body:
        body["max_tokens"] = 3
    return body


def operations(spec: dict):
    comps = spec["components"]["schemas"]
    ops = []
    for path, methods in spec["paths"].items():
        for method, op in methods.items():
            content = op.get("requestBody", {}).get("content", {})
            if "application/json" in content:
                ref = content["application/json"]["schema"]["$ref"]
                body = st.builds(nudge, from_schema({"$ref": ref}, comps) | JUNK, st.booleans(), st.just(ref.rsplit("/", 1)[-1]))
                kind = "json"
            elif "application/octet-stream" in content:
                body, kind = st.binary(max_size=256), "bytes"
            else:
                body, kind = st.none(), None
            ops.append(st.tuples(st.just(method.upper()), st.just(path), IDS, body, st.just(kind)))
    return st.one_of(*ops)


@pytest.fixture(scope="module")
def client(tiny, tmp_path_factory):
    from fastapi.testclient import TestClient

    from deltamem.serve.app import create_app
    from deltamem.serve.auth import KeyRing, key_hash
    from deltamem.store import MemoryStore

    store = MemoryStore("sqlite:///" + str(tmp_path_factory.mktemp("fuzz") / "f.db"))
    app = create_app(*tiny, store, keys=KeyRing({key_hash(h.KEYS["acme"]): "acme"}), model_name=h.MODEL,
                     max_new_tokens=8, max_body_bytes=4096)
    with TestClient(app) as c:  # raises on any unhandled server exception
        c.headers["Authorization"] = f"Bearer {h.KEYS['acme']}"
        yield c


def test_fuzz_every_endpoint_no_5xx(client):
    spec = client.get("/openapi.json").json()
    seen = {}

    @settings(max_examples=150, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(operations(spec))
    def run(req):
        method, path, mid, body, kind = req
        url = path.replace("{memory_id}", quote(mid, safe=""))
        kw = ({"content": json.dumps(body), "headers": {"Content-Type": "application/json"}} if kind == "json"
              else {"content": body} if kind == "bytes" else {})  # json.dumps: NaN and Infinity too
        r = client.request(method, url, **kw)
        seen[(method, path)] = seen.get((method, path), set()) | {r.status_code}
        assert r.status_code < 500, (method, url, body, r.text)
        if r.status_code >= 400:
            err = r.json()["error"]
            assert set(err) == {"message", "type", "param", "code"} and err["message"], r.text
        elif r.headers.get("content-type", "").startswith("text/event-stream"):
            assert r.text.rstrip().endswith("data: [DONE]")
        else:
            json.loads(r.text) if "json" in r.headers.get("content-type", "") else r.content

    run()
    assert len(seen) == sum(len(m) for m in spec["paths"].values())  # every operation was exercised
    assert any(200 in s or 201 in s for (m, p), s in seen.items() if p == "/v1/chat/completions")
