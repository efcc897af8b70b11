"""web/src/lib/api-types.ts is what scripts/api_types.py makes of /openapi.json today (the page's types
cannot drift from the server's response models), and the models describe what the routes answer."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TEXT = "The capital of France is Paris."


def _script():
    spec = importlib.util.spec_from_file_location("api_types", ROOT / "scripts" / "api_types.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_generated_typescript_is_not_stale(client):
    script = _script()
    want = script.render(client.get("/openapi.json").json(), script.stream_schemas())
    # the schema does not depend on a loaded model
    assert script.render(script.openapi(), script.stream_schemas()) == want
    got = (ROOT / "web" / "src" / "lib" / "api-types.ts").read_text(encoding="utf-8")
    assert got == want, "web/src/lib/api-types.ts is stale: run .venv/bin/python scripts/api_types.py"


def test_every_json_route_has_a_typed_answer(client):
    spec = client.get("/openapi.json").json()
    untyped = []
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            schema = (
                op["responses"].get("200", {}).get("content", {}).get("application/json", {}).get("schema")
            )
            if schema and "$ref" not in schema and schema.get("type") != "array":
                untyped.append(f"{method.upper()} {path}")
    assert untyped == [], untyped
    qk = spec["paths"]["/api/traces/{trace_id}/qk"]["get"]["responses"]["200"]
    assert qk["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/QkTerms"}
    lens = spec["paths"]["/api/traces/{trace_id}/logit_lens"]["get"]["responses"]["200"]
    assert lens["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Lens"}


def test_answers_keep_their_optional_keys_out(client, tid):
    """A key a route leaves out stays out (not null): the page tests `"target" in answer`."""
    lens = client.get(f"/api/traces/{tid}/logit_lens", params={"token": 1}).json()
    assert "target" not in lens
    assert "target" in client.get(f"/api/traces/{tid}/logit_lens", params={"token": 1, "target": 3}).json()
    metric = client.get(f"/api/traces/{tid}/metric", params={"name": "loss"}).json()
    assert set(metric) == {"name", "values", "scale"}
    hooks = client.get("/api/components").json()
    assert "point" not in hooks[0] and "point" in hooks[1]


def test_the_trace_summary_is_what_its_model_says(client, tid):
    """The summary routes answer a Response (JSON or the envelope), so FastAPI does not check them: this
    test does, keys included (a key added to Trace.summary() must be added to TraceSummary)."""
    from lmpeek.server.responses import TraceSummary

    for body in (
        client.get(f"/api/traces/{tid}").json(),
        client.post("/api/trace", json={"text": TEXT}).json(),
    ):
        assert set(body) == set(TraceSummary.model_fields)
        TraceSummary.model_validate(body, strict=True)
    spec = client.get("/openapi.json").json()
    for path, method in (("/api/trace", "post"), ("/api/traces/{trace_id}", "get")):
        content = spec["paths"][path][method]["responses"]["200"]["content"]
        assert content["application/json"]["schema"] == {"$ref": "#/components/schemas/TraceSummary"}


def test_generation_events_are_what_their_models_say(client):
    import json

    from lmpeek.server.responses import STREAM_EVENTS

    r = client.post("/api/generate", json={"prompt": "Once upon", "max_new_tokens": 3})
    events = [dict(line.split(": ", 1) for line in f.splitlines()) for f in r.text.strip().split("\n\n")]
    assert [e["event"] for e in events] == ["start", "token", "token", "token", "done"]
    for e in events:
        body = json.loads(e["data"])
        model = STREAM_EVENTS[e["event"]]
        assert set(body) == set(model.model_fields), e["event"]
        model.model_validate(body, strict=True)
