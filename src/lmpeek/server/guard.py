"""The server's edge: who may talk to it, how much they may send, and how bad input is answered.

- Host names: a web page the user visits can point its own domain at 127.0.0.1 (DNS rebinding) and then
  drive this server as a same-origin page; only loopback names, and those the user allows, are served.
- A token, when the server is exposed (`lmpeek serve --host 0.0.0.0`) or when one is given: in the
  URL once (`?token=`, which sets a cookie for the page's own requests), as `Authorization: Bearer`, or
  the cookie.
- Request bodies: refused past a size limit before they are read; JSON bodies must be strict JSON
  (no NaN/Infinity, no number that overflows a float, no lone surrogate in a string).
- No CORS unless origins are named.
- Validation errors are answered with 422 and one message naming every bad field (`detail`, a string
  like every other error's), never with an echo of the input (the echo of
  a NaN or a lone surrogate cannot be rendered as JSON, and an echo of a big body is a big answer).

`install(app, ...)` puts all of it on an app; `create_app` calls it once.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import math
import re
import secrets
from collections.abc import Iterable
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import AfterValidator, Field
from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
DEFAULT_MAX_BODY_BYTES = 4 * 2**20  # a 200,000-character text is at most ~2.4 MB even as \u escapes

# what the trace store hands out (uuid4 hex, 16 characters); anything else cannot name a stored trace
TRACE_ID_PATTERN = r"^[0-9a-f]{16}$"
_TRACE_ID = re.compile(r"[0-9a-f]{16}")


def _trace_id(
    trace_id: Annotated[
        str,
        Path(
            description="a trace id, as POST /api/trace returns it",
            json_schema_extra={"pattern": TRACE_ID_PATTERN},  # documented; checked below with a 404
        ),
    ],
) -> str:
    # a 404 like any unknown id, but before the id reaches the store (a 300-character id is a file
    # name too long for the file system there)
    if not _TRACE_ID.fullmatch(trace_id):
        shown = safe_text(trace_id, 40)
        raise HTTPException(404, detail=f"no trace with id '{shown}' (ids are 16 hex digits)")
    return trace_id


TraceId = Annotated[str, Depends(_trace_id)]
# hook names are dotted ASCII (blocks.3.attn.hook_q); checked here so that a newline or a 10,000-digit
# layer number never reaches a parser, a file name or a header
HOOK_PATTERN = r"^[A-Za-z0-9_.]{1,200}$"

# a JSON body's index (layer, head, neuron, feature, token): an integer, not 1.0 or "1"
Index = Annotated[int, Field(ge=0, strict=True)]


def hook_name(pattern: str, meaning: str) -> Any:
    """A body field holding one of the hook names `pattern` matches: the pattern goes into the schema
    (clients and the fuzzer see it) and a name outside it is answered with "must be " + `meaning`, which
    says which names are meant (a regular expression does not)."""

    def check(value: str) -> str:
        if not re.fullmatch(pattern, value):
            raise ValueError(f"must be {meaning}")
        return value

    schema = Field(max_length=200, json_schema_extra={"pattern": pattern})
    return Annotated[str, schema, AfterValidator(check)]


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or localhost (what `lmpeek serve` may bind to without a token)."""
    name = host.strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def install(
    app: FastAPI,
    *,
    allowed_hosts: Iterable[str] = (),
    token: str | None = None,
    cors_origins: Iterable[str] = (),
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
) -> None:
    """Guard `app`. `allowed_hosts`: Host names served besides loopback ('*' = any); `token`: required
    from every client if given; `cors_origins`: origins whose pages may call the API."""
    app.add_exception_handler(RequestValidationError, _validation_error)
    # add_middleware puts each one outside the ones before it: requests meet them bottom to top
    app.add_middleware(BodyGuard, max_bytes=max_body_bytes)
    if token is not None:
        if not token:
            raise ValueError("the token must not be empty")
        app.add_middleware(TokenGuard, token=token)
    origins = list(cors_origins)
    if origins:
        from starlette.middleware.cors import CORSMiddleware

        # outside the token guard: a browser's preflight request carries no credential
        app.add_middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "Accept"],
            expose_headers=["X-Shape", "Content-Disposition"],
        )
    app.add_middleware(HostGuard, allowed=tuple(allowed_hosts))


# --- answers -----------------------------------------------------------------------------------------


async def _answer(send: Send, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
    body = json.dumps({"detail": detail}, ensure_ascii=True).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def safe_text(value: Any, limit: int = 300) -> str:
    """`value` as text that renders anywhere: lone surrogates replaced, cut to `limit` characters."""
    text = str(value)
    if len(text) > limit:
        text = text[:limit] + f"… ({len(text)} characters)"
    return text.encode("utf-8", "replace").decode("utf-8")


def _safe_value(value: Any) -> Any:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if abs(value) < 2**63 else safe_text(value, 40)
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    return safe_text(value, 200)


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's 422 as one readable message listing every problem at once ("top_k: must be ≤ 100;
    text: must not be empty") in `detail`, the same shape as every other error; the items are kept in
    `errors` for programs. Never the `input` FastAPI echoes (NaN and lone surrogates cannot be
    rendered, and a big body would come back whole); `ctx` keeps only its plain values (the bounds)."""
    assert isinstance(exc, RequestValidationError)
    errors = []
    for e in list(exc.errors())[:20]:
        item: dict[str, Any] = {
            "type": safe_text(e.get("type", ""), 60),
            "loc": [_safe_value(p) for p in e.get("loc", ())][:10],
            "msg": safe_text(e.get("msg", "")),
        }
        ctx = {k: _safe_value(v) for k, v in (e.get("ctx") or {}).items() if _plain(v)}
        if ctx:
            item["ctx"] = ctx
        errors.append(item)
    return JSONResponse({"detail": describe_errors(errors), "errors": errors}, status_code=422)


_WHERE = ("body", "query", "path", "header", "cookie")
# what each kind of validation error means, said the way a form would say it ({…} from its ctx)
_SAID = {
    "missing": "is required",
    "less_than_equal": "must be ≤ {le}",
    "less_than": "must be < {lt}",
    "greater_than_equal": "must be ≥ {ge}",
    "greater_than": "must be > {gt}",
    "string_too_long": "must be at most {max_length:,} characters",
    "string_too_short": "must be at least {min_length:,} characters",
    "int_type": "must be a whole number",
    "int_parsing": "must be a whole number",
    "int_from_float": "must be a whole number",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "string_type": "must be text (a JSON string)",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "literal_error": "must be one of {expected}",
    "string_pattern_mismatch": "is not in the form this server takes",
    "model_attributes_type": "must be a JSON object",
    "dict_type": "must be a JSON object",
    "list_type": "must be a list",
}


def _field(loc: list[Any]) -> str:
    parts = list(loc[1:] if loc and loc[0] in _WHERE else loc)
    return ".".join(str(p) for p in parts)


def _said(item: dict[str, Any]) -> str:
    kind, ctx, msg = item.get("type", ""), item.get("ctx") or {}, str(item.get("msg", ""))
    if kind == "json_invalid":  # loc is ("body", character position)
        pos = item["loc"][-1] if len(item.get("loc", ())) > 1 else None
        where = f" at character {pos}" if isinstance(pos, int) else ""
        return f"request body: not valid JSON{where} ({ctx.get('error', msg)})"
    template = _SAID.get(kind)
    if template is not None:
        try:
            said = template.format(**ctx)
        except (KeyError, ValueError, IndexError):  # a ctx without the bound: pydantic's own words
            said = msg[:1].lower() + msg[1:]
    else:
        said = msg.removeprefix("Value error, ").removeprefix("Assertion failed, ")
        said = said[:1].lower() + said[1:]
    field = _field(item.get("loc", []))
    return f"{field}: {said}" if field else f"request body {said}"


def describe_errors(errors: list[dict[str, Any]]) -> str:
    """Validation errors as one message, every problem once, in the order of the fields, each with its
    field name: "top_k: must be ≤ 100; text: must not be empty"."""
    said: list[str] = []
    for item in errors:
        s = _said(item)
        if s not in said:
            said.append(s)
    return "; ".join(said) or "the request is not valid"


def _plain(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


# --- Host names --------------------------------------------------------------------------------------

_HOST = re.compile(r"(\[[0-9a-f:.]+\]|[^:\[\]]+)(?::\d{1,5})?")


def _host_name(header: str) -> str | None:
    """'localhost:8000' -> 'localhost', '[::1]:8000' -> '::1'; None when it is not a Host value."""
    m = _HOST.fullmatch(header.strip().lower())
    return m.group(1).strip("[]") if m else None


class HostGuard:
    """Serves only requests whose Host is a loopback name or one the user allowed (DNS rebinding)."""

    def __init__(self, app: ASGIApp, allowed: tuple[str, ...] = ()):
        self.app = app
        self.any = "*" in allowed
        self.allowed = {"127.0.0.1", "localhost", "::1"} | {h.strip("[]").lower() for h in allowed}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or self.any:
            return await self.app(scope, receive, send)
        header = Headers(scope=scope).get("host")
        if header is not None and _host_name(header) in self.allowed:
            return await self.app(scope, receive, send)
        if scope["type"] != "http":  # a websocket that never gets accepted is closed with 403
            return await send({"type": "websocket.close", "code": 1008})
        shown = safe_text(header, 80) if header else "(none)"
        await _answer(
            send,
            400,
            f"Host {shown} is not served: this lmpeek server answers to {', '.join(sorted(self.allowed))}."
            " To use another name, start it with `lmpeek serve --allow-host NAME`.",
        )


# --- token -------------------------------------------------------------------------------------------


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()


def _equal(a: str, b: str) -> bool:
    return secrets.compare_digest(a.encode("utf-8", "replace"), b.encode("utf-8", "replace"))


def _same(given: str, expected_digest: str) -> bool:
    # digests are compared, so the comparison takes the same time whatever the given text is
    return _equal(_digest(given), expected_digest)


class TokenGuard:
    """Requires the server's token: `?token=` (then a cookie for the page's own requests),
    `Authorization: Bearer`, or the cookie."""

    def __init__(self, app: ASGIApp, token: str):
        self.app = app
        self.digest = _digest(token)

    @staticmethod
    def cookie_name(scope: Scope) -> str:
        # cookies are shared by every port of a host: one name per port keeps two servers apart
        server = scope.get("server") or ("", None)
        return f"lmpeek-token-{server[1]}" if server[1] is not None else "lmpeek-token"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        conn = HTTPConnection(scope)
        cookie = self.cookie_name(scope)
        in_url = conn.query_params.get("token")
        if in_url is not None and _same(in_url, self.digest):
            return await self.app(scope, receive, self._set_cookie(send, cookie))
        scheme, _, bearer = conn.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and _same(bearer.strip(), self.digest):
            return await self.app(scope, receive, send)
        # the cookie holds the digest itself (so the token is never stored in the browser)
        if _equal(conn.cookies.get(cookie, ""), self.digest):
            return await self.app(scope, receive, send)
        if scope["type"] != "http":
            return await send({"type": "websocket.close", "code": 1008})
        wrong = in_url is not None or bool(bearer)
        await _answer(
            send,
            401,
            ("that token is not this server's" if wrong else "this lmpeek server needs a token")
            + ": open the URL `lmpeek serve` printed (…/?token=…), or send `Authorization: Bearer TOKEN`.",
            {"WWW-Authenticate": "Bearer"},
        )

    def _set_cookie(self, send: Send, name: str) -> Send:
        async def send_with_cookie(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers.append("set-cookie", f"{name}={self.digest}; Path=/; HttpOnly; SameSite=Strict")
            await send(message)

        return send_with_cookie


# --- request bodies ----------------------------------------------------------------------------------


class _Refused(HTTPException):
    # an HTTPException, so that FastAPI passes it on when it comes out of `receive` mid-read
    def __init__(self, status: int, detail: str):
        super().__init__(status, detail)
        self.status = status


def _is_json(content_type: str | None) -> bool:
    # the same test FastAPI uses to decide it parses a body as JSON
    if not content_type:
        return False
    media = content_type.split(";", 1)[0].strip().lower()
    main, _, sub = media.partition("/")
    return main == "application" and (sub == "json" or sub.endswith("+json"))


def _strict_json(body: bytes) -> None:
    """Raise `_Refused` for what Python's json accepts but JSON does not, or what no handler can
    use: NaN/Infinity, numbers that overflow a float, integers past Python's digit limit, lone
    surrogates. Malformed JSON is left to FastAPI, which reports where it breaks."""

    def no_constant(name: str) -> Any:
        raise _Refused(422, f"request body: {name} is not a JSON number; send a finite number")

    def finite(text: str) -> float:
        value = float(text)
        if not math.isfinite(value):
            raise _Refused(422, f"request body: {safe_text(text, 40)} is too large for a number")
        return value

    def integer(text: str) -> int:
        if len(text) > 40:  # far past any count or seed; int() of 5,000 digits raises anyway
            raise _Refused(422, f"request body: an integer of {len(text)} digits is too large")
        return int(text)

    try:
        data = json.loads(body, parse_constant=no_constant, parse_float=finite, parse_int=integer)
    except _Refused:
        raise
    except UnicodeDecodeError:
        raise _Refused(400, "request body: not valid UTF-8 text") from None
    except RecursionError:
        raise _Refused(422, "request body: JSON nested too deeply") from None
    except ValueError:  # malformed: FastAPI answers 422 with the position
        return
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise _Refused(
                    422, "request body: a string holds a lone surrogate (\\ud800-\\udfff); send valid Unicode"
                ) from None


class BodyGuard:
    """Refuses request bodies over `max_bytes` (by Content-Length before reading, and by counting
    what arrives), and JSON bodies that are not strict JSON. A refused body is never echoed."""

    def __init__(self, app: ASGIApp, max_bytes: int = DEFAULT_MAX_BODY_BYTES):
        self.app = app
        self.max_bytes = max_bytes

    def _too_large(self, size: str) -> _Refused:
        limit = f"{self.max_bytes / 2**20:g} MiB" if self.max_bytes >= 2**20 else f"{self.max_bytes} bytes"
        return _Refused(413, f"request body is {size}; this server accepts at most {limit}")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = Headers(scope=scope)
        try:
            declared = headers.get("content-length")
            if declared is not None:
                if not declared.strip().isdigit():
                    raise _Refused(400, "Content-Length must be a number of bytes")
                if int(declared) > self.max_bytes:
                    raise self._too_large(f"{int(declared):,} bytes")
            if _is_json(headers.get("content-type")):
                body = await self._read(receive)
                _strict_json(body)
                receive = _replay(body, receive)
            else:
                receive = self._counting(receive)
        except _Refused as refused:
            return await _answer(send, refused.status, refused.detail)

        started = False

        async def send_tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, send_tracked)
        except _Refused as refused:  # a body counted past the limit while the app read it
            if started:
                raise
            await _answer(send, refused.status, refused.detail)

    async def _read(self, receive: Receive) -> bytes:
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                raise _Refused(400, "the client closed the connection before sending the body")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                raise self._too_large("larger than that")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    def _counting(self, receive: Receive) -> Receive:
        size = 0

        async def counted() -> Message:
            nonlocal size
            message = await receive()
            if message["type"] == "http.request":
                size += len(message.get("body", b""))
                if size > self.max_bytes:
                    raise self._too_large("larger than that")
            return message

        return counted


def _replay(body: bytes, receive: Receive) -> Receive:
    """The body read up front, then the client's own messages (a disconnect must still arrive)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
