"""Fuzzing the HTTP API: a table of nasty inputs for every route, then schemathesis over the app's own
OpenAPI spec (valid and invalid requests), in-process, derandomised and bounded in count.

Every answer must be below 500 (503 only with Retry-After), must parse as what its content type says
(strict JSON, float16 bytes of the shape in X-Shape, a .npy file), and a 4xx must say what was wrong;
a generation stream must end with a `done` or an `error` event."""

from __future__ import annotations

import io
import json
import math
import re

import numpy as np
import pytest

TEXT = "The capital of France is Paris. Berlin is in Germany."
JSON = {"content-type": "application/json"}


def _strict(text: str):
    def refuse(name):
        raise AssertionError(f"{name} in a JSON answer")

    return json.loads(text, parse_constant=refuse)


def _events(text: str) -> list[tuple[str, object]]:
    out = []
    for frame in text.strip().split("\n\n"):
        # SSE ends lines at CR or LF only: str.splitlines would also cut at U+2028 inside JSON strings
        lines = dict(line.split(": ", 1) for line in frame.split("\n"))
        out.append((lines["event"], _strict(lines["data"])))
    return out


def check_answer(r) -> None:
    """The contract every answer keeps, whatever was asked."""
    what = f"{r.request.method} {str(r.request.url)[:300]} -> {r.status_code}: {r.text[:300]!r}"
    assert r.status_code < 500 or (r.status_code == 503 and "retry-after" in r.headers), what
    media = r.headers.get("content-type", "").split(";")[0]
    if media == "application/json":
        body = _strict(r.text)
        if r.status_code >= 400:
            assert isinstance(body, dict) and body.get("detail"), what
    elif media == "text/event-stream":
        events = _events(r.text)
        if r.request.url.path.startswith("/api/why/"):  # an attribution: estimate, progress…, result or error
            assert events[0][0] == "estimate" and events[-1][0] in ("result", "error"), what
            assert all(e == "progress" for e, _ in events[1:-1]), what
        else:  # a generation: start, token…, done or error
            assert events[0][0] == "start" and events[-1][0] in ("done", "error"), what
            assert all(e == "token" for e, _ in events[1:-1]), what
    elif media == "application/octet-stream":
        if "x-shape" in r.headers:
            shape = [int(n) for n in r.headers["x-shape"].split(",")]
            assert len(r.content) == 2 * math.prod(shape), what
        else:
            assert re.fullmatch(
                r'attachment; filename="[A-Za-z0-9_.-]+\.npy"', r.headers["content-disposition"]
            )
            assert np.load(io.BytesIO(r.content)).dtype == np.float32, what
    elif media == "text/html":
        assert r.status_code < 400, what
    else:
        raise AssertionError(f"unexpected content type {media!r}: {what}")


# --- a table of nasty inputs -------------------------------------------------------------------------

# raw JSON text for a value: what Python's json accepts but JSON does not, overflows, wrong types
NUMBERS = [
    "NaN",
    "Infinity",
    "-Infinity",
    "1e400",
    "-1e400",
    "1e308",
    "1e-300",
    "5e-324",
    "-0.0",
    str(10**30),
    str(-(10**30)),
    str(2**64),
    str(2**64 - 1),
    str(2**63),
    str(-(2**63)),
    str(-(2**63) - 1),
    "1" + "0" * 5000,
    "true",
    "false",
    "null",
    '"5"',
    "[]",
    "{}",
    "1.5",
    "-1",
    "0",
]
STRINGS = [
    '"\\ud800"',
    '"a\\udfffb"',
    '"\\ud83d"',
    '"\\u0000"',
    '"\\n"',
    '"<eot>"',
    '"<eot><eot>"',
    '"\\ud83d\\ude00"',
    "123",
    "null",
    "true",
    "[]",
    "{}",
    '""',
    '" "',
]

TRACE_BODY = {"text": '"Hello world"', "top_k": "3"}
GENERATE_BODY = {
    "prompt": '"Hello"',
    "max_new_tokens": "2",
    "temperature": "0.8",
    "top_p": "0.9",
    "top_k": "5",
    "seed": "1",
}


def _body_cases():
    for route, base in (("/api/trace", TRACE_BODY), ("/api/generate", GENERATE_BODY)):
        for field, default in base.items():
            values = STRINGS if default.startswith('"') else NUMBERS
            for raw in values:
                fields = {**base, field: raw}
                body = "{" + ", ".join(f'"{k}": {v}' for k, v in fields.items()) + "}"
                yield pytest.param(route, body, id=f"{route}-{field}={raw[:20]}")


@pytest.mark.parametrize("route, body", list(_body_cases()))
def test_nasty_json_fields(client, route, body):
    r = client.post(route, content=body.encode(), headers=JSON)
    check_answer(r)


@pytest.mark.parametrize(
    "route, body, headers",
    [
        ("/api/trace", b"", JSON),
        ("/api/trace", b"null", JSON),
        ("/api/trace", b"[]", JSON),
        ("/api/trace", b'"text"', JSON),
        ("/api/trace", b"{", JSON),
        ("/api/trace", b'{"text": "a", "text": "b"}', JSON),
        ("/api/trace", b"\xff\xfe{}", JSON),
        ("/api/trace", '{"text": "hi"}'.encode("utf-16"), JSON),
        ("/api/trace", b'{"text": "\xed\xa0\x80"}', JSON),  # a surrogate encoded as UTF-8
        ("/api/trace", b"[" * 50_000 + b"]" * 50_000, JSON),
        ("/api/trace", b'{"text": "hi"}', {"content-type": "text/plain"}),
        ("/api/trace", b'{"text": "hi"}', {}),
        ("/api/trace", b"text=hi", {"content-type": "application/x-www-form-urlencoded"}),
        ("/api/trace", b'{"text": "hi"}', {"content-type": "application/json; charset=latin-1"}),
        ("/api/generate", b'{"prompt": "hi", "max_new_tokens": 1e400}', JSON),
        ("/api/generate", b'{"prompt": "hi", "seed": 18446744073709551616}', JSON),
        ("/api/generate", b'{"prompt": "hi", "seed": -9223372036854775809}', JSON),
        ("/api/generate", b'{"prompt": "\\u0000", "max_new_tokens": 1}', JSON),
        ("/api/generate", b'{"prompt": "hi", "max_new_tokens": 1, "extra": NaN}', JSON),
    ],
)
def test_nasty_bodies(client, route, body, headers):
    check_answer(client.post(route, content=body, headers=headers))


LONG_ID = "a" * 300


def _get_cases():
    """(path template, query) pairs; {tid} is a real trace's id."""
    hook = "blocks.0.hook_resid_post"
    yield "/api/traces/" + LONG_ID, {}
    yield "/api/traces/" + "A" * 16, {}
    yield "/api/traces/%00", {}
    yield "/api/traces/%ED%A0%80", {}  # a surrogate, percent-encoded
    yield "/api/traces/..%2F..%2Fcatalogue.sqlite", {}
    yield "/api/traces/" + LONG_ID + "/attention", {"layer": 0, "head": 0}
    yield "/api/traces/" + LONG_ID + "/vector", {"hook": hook, "token": 0}
    for q in [
        {"layer": 10**30, "head": 0},
        {"layer": -1, "head": 0},
        {"layer": "1e400", "head": 0},
        {"layer": "NaN", "head": 0},
        {"layer": "true", "head": 0},
        {"layer": "", "head": 0},
        {"layer": 0, "head": 10**30},
        {"layer": 0, "head": 0, "query": 10**30},
        {"layer": 0, "head": 0, "key": -5},
        {"layer": 0, "head": 0, "rope": "bogus"},
        {"layer": 0, "head": 0, "rope": "applied"},
        {"layer": 0, "head": 0, "query": 0, "key": 0},
    ]:
        yield "/api/traces/{tid}/attention", q
    for q in [
        {"hook": hook + "\n", "token": 0, "format": "npy"},
        {"hook": hook + "\r\n", "token": 0},
        {"hook": "blocks.0.attn.hook_q\n", "token": 0, "head": 0, "format": "npy"},
        {"hook": 'x"; filename=evil.sh', "token": 0, "format": "npy"},
        {"hook": "blocks." + "9" * 5000 + ".hook_resid_post", "token": 0},
        {"hook": "blocks.99999999999999999999.hook_resid_post", "token": 0},
        {"hook": "blocks.٣.hook_resid_post", "token": 0},
        {"hook": "", "token": 0},
        {"hook": hook, "token": 10**30},
        {"hook": hook, "token": "1e400"},
        {"hook": "blocks.0.attn.hook_q", "token": 0, "head": 10**30},
        {"hook": "blocks.0.attn.hook_q", "token": 0},
        {"hook": hook, "token": 0, "format": "xml"},
        {"hook": hook, "token": 0, "format": "npy"},
    ]:
        yield "/api/traces/{tid}/vector", q
    for route, q in [
        ("activations", {"hook": hook, "stat": "value", "dim": 10**30}),
        ("activations", {"hook": hook, "stat": "value"}),
        ("activations", {"hook": hook + "\n"}),
        ("activations", {"hook": hook, "scale": "NaN"}),
        ("similarity", {"hook": hook, "token": 10**30}),
        ("similarity", {"hook": hook, "kind": "previous"}),
        ("similarity", {"hook": "hook_embed", "kind": "residual"}),
        ("histogram", {"hook": hook, "bins": 10**30}),
        ("histogram", {"hook": hook, "bins": "true"}),
        ("scatter", {"hook": hook}),
        ("scatter", {"hook": hook, "x": 0, "y": 10**30}),
        ("scatter", {"hook": hook, "a": 0, "b": 10**30}),
        ("logit_lens", {"token": 10**30}),
        ("logit_lens", {"token": 0, "k": 10**30}),
        ("neurons", {"layer": 10**30, "token": 0}),
        ("neurons", {"layer": 0, "token": 0, "k": 0}),
        ("neuron", {"layer": 0, "index": 10**30}),
        ("neuron", {"layer": -1, "index": 0}),
    ]:
        yield "/api/traces/{tid}/" + route, q
    yield "/api/traces/{tid}/vector?hook=%ED%A0%80&token=0", {}  # a surrogate, percent-encoded
    yield "/api/traces/{tid}/vector?hook=blocks.0.hook_resid_post%0A&token=0&format=npy", {}
    yield "/api/compare", {"a": LONG_ID, "b": "{tid}"}
    yield "/api/compare", {"a": "{tid}", "b": "0" * 16}
    yield "/api/compare", {"a": "{tid}", "b": "{tid}", "component": "bogus"}
    yield "/api/samples/" + "s" * 10_000, {}
    yield "/api/samples/%00", {}
    yield "/api/samples/..%2F..%2Fetc%2Fpasswd", {}
    yield "/api/samples/user:%ED%A0%80", {}


@pytest.mark.parametrize("path, query", list(_get_cases()), ids=lambda v: str(v)[:60])
def test_nasty_queries_and_paths(client, tid, path, query):
    query = {k: (tid if v == "{tid}" else v) for k, v in query.items()}
    r = client.get(path.replace("{tid}", tid), params=query)
    check_answer(r)


def test_a_long_trace_id_is_a_404(client):
    r = client.get("/api/traces/" + LONG_ID)
    assert r.status_code == 404 and "no trace" in r.json()["detail"]


def test_a_hook_name_with_a_newline_is_refused(client, tid):
    r = client.get(
        f"/api/traces/{tid}/vector",
        params={"hook": "blocks.0.hook_resid_post\n", "token": 0, "format": "npy"},
    )
    assert r.status_code == 422 and "hook" in r.text


def test_extreme_seeds_are_taken(client):
    for seed in (2**64 - 1, -(2**63)):
        body = {"prompt": "Hello", "max_new_tokens": 2, "temperature": 0.8, "seed": seed}
        r = client.post("/api/generate", json=body)
        assert r.status_code == 200 and _events(r.text)[-1][0] == "done"
    for seed in (2**64, -(2**63) - 1, True, 1.0):
        r = client.post("/api/generate", json={"prompt": "Hello", "seed": seed})
        assert r.status_code == 422 and "seed" in r.text


# --- schemathesis over the OpenAPI spec --------------------------------------------------------------

schemathesis = pytest.importorskip("schemathesis")
_ID = re.compile(r"[0-9a-f]{16}")


@pytest.fixture(scope="module")
def spec(client):
    return schemathesis.openapi.from_asgi("/openapi.json", client.app)


@pytest.fixture(scope="module")
def hooks(client):
    names = [c["hook"] for c in client.get("/api/components").json()]
    return [n.replace("{l}", str(layer)) for n in names for layer in (0, 1)]


@pytest.fixture(scope="module")
def tids(client, tid):
    return [tid, client.post("/api/trace", json={"text": "Another text, shorter."}).json()["id"]]


def _send(client, case, tids, hooks=()):
    """The case through our own client (schemathesis' ASGI client stops reading a stream at 20 events),
    with real trace ids where the case has a well-formed one, so that the routes behind the id run."""
    if case.path_parameters and _ID.fullmatch(str(case.path_parameters.get("trace_id", ""))):
        case.path_parameters["trace_id"] = tids[len(case.path_parameters["trace_id"]) % 2]
    if case.operation.path == "/api/compare" and isinstance(case.query, dict):
        for i, name in enumerate(("a", "b")):
            if _ID.fullmatch(str(case.query.get(name, ""))):
                case.query[name] = tids[i]
    if hooks and isinstance(case.query, dict) and len(repr(case.query)) % 2:
        # half the cases: a real hook name and small numbers, so that the routes' own work runs too
        # (random hook names and layer numbers stop at the first check)
        if "hook" in case.query:
            case.query["hook"] = hooks[len(str(case.query["hook"])) % len(hooks)]
        for name in ("layer", "head", "token", "query", "key", "dim", "x", "y", "a", "b", "index"):
            value = case.query.get(name)
            if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                case.query[name] = value % (2 if name == "layer" else 6)
    if case.operation.path == "/api/generate" and isinstance(case.body, dict):
        n = case.body.get("max_new_tokens")
        if isinstance(n, int) and not isinstance(n, bool) and n > 8:
            case.body["max_new_tokens"] = 8  # bounded time; 1..2048 is checked by the table above
    if hooks and case.operation.path.startswith("/api/why/") and isinstance(case.body, dict):
        _reachable_why(case.body, len(repr(case.body)) % 2 == 0)
    kw = case.as_transport_kwargs(base_url="http://testserver")
    request = {"headers": kw.get("headers"), "params": kw.get("params")}
    if "json" in kw:
        request["content"] = json.dumps(kw["json"]).encode()
    elif isinstance(kw.get("data"), (bytes, str)):
        request["content"] = kw["data"]
    elif kw.get("data") is not None:
        request["data"] = kw["data"]
    return client.request(kw["method"], kw["url"], **request)


def _small(body: dict, name: str, most: int) -> None:
    n = body.get(name)
    if isinstance(n, int) and not isinstance(n, bool) and n > most:
        body[name] = most


def _reachable_why(body: dict, often: bool) -> None:
    """A valid Why job in bounded time (random lengths, hooks and directions stop at the first check;
    the routes' ranges are tested in their own files): few tokens to write, and for half the cases
    an equal-length prompt B, a real writable hook, a neuron to steer along."""
    for name, most in (("max_new_tokens", 3), ("generate", 2), ("verify", 3)):
        _small(body, name, most)
    if isinstance(body.get("variants"), list):
        body["variants"] = body["variants"][:3]
    if body.get("sweep") is True:
        body["sweep"] = False
    if not often:
        return
    if "source" in body and isinstance(body.get("text"), str):  # the patching grid: A and B alike
        body["source"] = body["text"]
    if isinstance(body.get("direction"), dict):
        body["direction"] = {"kind": "neuron", "layer": 0, "index": 1}
        body["layers"] = None
    if isinstance(body.get("edits"), list):
        body["edits"] = [{"action": "ablate", "hook": "blocks.0.hook_mlp_out", "mode": "zero"}]


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_fuzz_the_openapi_spec(client, spec, tids, hooks, mode):
    """Each operation on its own (so that none is left out), 30 derandomised examples each."""
    from hypothesis import HealthCheck, Phase, given, settings
    from schemathesis.generation.modes import GenerationMode

    answered: dict[str, set[int]] = {}
    for result in spec.get_all_operations():
        operation = result.ok()
        if mode == "negative" and not (operation.path_parameters or operation.query or operation.body):
            continue  # nothing to get wrong

        @settings(
            max_examples=30,
            derandomize=True,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
            phases=[Phase.generate, Phase.shrink],
        )
        @given(case=operation.as_strategy(GenerationMode(mode)))
        def run(case):
            r = _send(client, case, tids, hooks if mode == "positive" else ())
            check_answer(r)
            answered.setdefault(case.operation.label, set()).add(r.status_code)

        run()
        assert operation.label in answered, operation.label
    if mode == "positive":  # valid requests reached the routes' work, not only their checks
        # a feature source's routes need a feature database, which this app has none of: they are fuzzed
        # with one in test_features_routes.py (and must still answer < 500 here)
        counted = {k: v for k, v in answered.items() if not k.split(" ")[1].startswith("/api/features/")}
        assert sum(200 in codes for codes in counted.values()) >= len(counted) - 2, answered
