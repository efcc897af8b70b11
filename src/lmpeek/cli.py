"""`lmpeek trace|generate|check|models`: a thin layer over lmpeek.api.

Errors a user can cause (bad text, unknown model, bad numbers, bad options) end the command with exit
code 2 and one line on stderr; a failed `check` exits 1, and so does an unexpected error (one line too;
LMPEEK_DEBUG=1 shows its traceback). Libraries' own warnings (transformers' deprecations, ...) are for
developers and never reach the terminal; lmpeek's notes do.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import sys
import warnings
from collections.abc import Iterator
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text
from typer.core import TyperGroup

from lmpeek.errors import LmpeekError


def _one_line(message: str) -> str:
    """A message as one printable line: newlines folded, lone surrogates (from undecodable argv
    bytes) escaped so that printing cannot fail."""
    text = " ".join(part.strip() for part in str(message).splitlines() if part.strip())
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


class _OneLineErrors(TyperGroup):
    """Usage errors (a bad option value, an unknown option) as one line and exit code 2, like every
    other error the user can cause, instead of click's usage block."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except typer.TyperException as e:  # click's exceptions, as vendored by typer
            if type(e).__name__ == "NoArgsIsHelpError":  # `lmpeek` alone, or a command without arguments
                return super().main(args, prog_name, complete_var, standalone_mode=True, **extra)
            ctx = getattr(e, "ctx", None)
            hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
            _print_error(e.format_message() + hint)
            sys.exit(getattr(e, "exit_code", 2))
        except typer.Abort:
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    cls=_OneLineErrors,
    help="See inside a transformer language model while it reads or writes text.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# Piped output (files, CI logs) has no terminal width; rich would assume 80 columns and wrap tables.
out = Console(highlight=False, width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, highlight=False)

ModelOpt = Annotated[
    str,
    typer.Option(
        "--model", "-m", help="'default', a HF folder, a hub id in the local cache, a .gguf file, tiny:ARCH"
    ),
]


def _print_error(message: str) -> None:
    err.print(Text("error: ", style="bold red"), Text(_one_line(message)), sep="", soft_wrap=True)


def _fail(message: str, code: int = 2) -> None:
    _print_error(message)
    raise typer.Exit(code)


def friendly(fn):
    """Turn the errors a user can cause into one line and exit code 2 instead of a traceback; anything
    else (a bug) into one line and exit code 1, with its traceback only when LMPEEK_DEBUG=1."""

    @functools.wraps(fn)
    def run(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except LmpeekError as e:
            _fail(str(e))
        except (typer.Exit, typer.Abort, typer.TyperException):
            raise
        except Exception as e:
            if os.environ.get("LMPEEK_DEBUG") == "1":
                raise
            _fail(
                f"unexpected {type(e).__name__}: {e} (a bug in lmpeek or a library it uses: run again "
                "with LMPEEK_DEBUG=1 for the traceback, and please report it)",
                code=1,
            )

    return run


@contextlib.contextmanager
def _libraries_quiet() -> Iterator[None]:
    """No library warnings or log lines in the terminal (a deprecation in a new transformers release is
    news for lmpeek's developers, who see it in the test suite, not for the user); lmpeek's own
    warnings still show."""
    from transformers import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            warnings.filterwarnings("default", module=r"lmpeek(\.|$)")
            yield
    finally:
        hf_logging.set_verbosity(verbosity)


def quiet(fn):
    """Run a command inside `_libraries_quiet`."""

    @functools.wraps(fn)
    def run(*args, **kwargs):
        with _libraries_quiet():
            return fn(*args, **kwargs)

    return run


RemoteOpt = Annotated[
    bool,
    typer.Option(
        "--trust-remote-code", help="Allow a model's own Python code to run (only if you trust it)."
    ),
]


def _load(source: str, trust_remote_code: bool = False):
    from lmpeek.api import load

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        model = load(source, trust_remote_code=trust_remote_code)
    for w in caught:
        if "lmpeek" in str(w.message) or "adapter" in str(w.message):
            err.print(f"[yellow]note:[/] {w.message}")
    return model


def _fmt(x: float, digits: int = 3) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _show(token: str) -> str:
    return token.replace("\n", "\\n").replace("\t", "\\t")


@app.command("trace")
@friendly
@quiet
def trace_cmd(
    text: Annotated[str, typer.Argument(help="Text to run; '<eot>' separates chat turns.")],
    model: ModelOpt = "default",
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1, help="Alternatives kept per position.")] = 10,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the trace's summary fields as JSON.")
    ] = False,
    save: Annotated[str | None, typer.Option("--save", help="Save the trace to this folder.")] = None,
    keep: Annotated[
        list[str] | None, typer.Option("--keep", help="Hook names/globs to keep (with --save).")
    ] = None,
    allow_nonfinite: Annotated[
        bool, typer.Option("--allow-nonfinite", help="Save a trace even if the model produced inf/NaN.")
    ] = False,
    trust_remote_code: RemoteOpt = False,
) -> None:
    """Run the model on TEXT once and show, per token, what it predicted next."""
    from lmpeek.api import trace
    from lmpeek.capture.trace import NonFiniteWarning

    m = _load(model, trust_remote_code)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", NonFiniteWarning)
        t = trace(m, text, top_k=top_k, keep=keep or ())
    if save:  # refuses inf/NaN (one line, exit 2) unless --allow-nonfinite
        path = t.save(save, allow_nonfinite=allow_nonfinite)
        err.print(f"saved trace to {path}")
    for w in caught:  # the model produced inf/NaN: one line, not a Python warning's two
        note = Text(_one_line(str(w.message)))
        err.print(Text("warning: ", style="bold yellow"), note, sep="", soft_wrap=True)
    if as_json:
        sys.stdout.write(json.dumps(t.summary(), ensure_ascii=False) + "\n")
        return
    table = Table(title=f"{m.name} · {len(t)} tokens", title_justify="left", expand=False)
    for col, just in [
        ("#", "right"),
        ("token", "left"),
        ("next", "left"),
        ("p(next)", "right"),
        ("loss", "right"),
        ("entropy", "right"),
        ("top-3 predictions", "left"),
    ]:
        table.add_column(col, justify=just)  # type: ignore[arg-type]
    for i, tok in enumerate(t.tokens):
        nxt = t.tokens[i + 1] if i + 1 < len(t) else ""
        p = float(t.true_prob[i])
        style = "" if math.isnan(p) else ("green" if p >= 0.5 else "yellow" if p >= 0.1 else "red")
        top3 = zip(t.topk_tokens[i][:3], t.topk_probs[i][:3], strict=True)
        alts = "  ".join(f"{s!r} {pr:.2f}" for s, pr in top3)
        table.add_row(
            str(i),
            repr(tok),
            repr(nxt) if nxt else "",
            Text(_fmt(p), style=style),
            _fmt(float(t.loss[i])),
            _fmt(float(t.entropy[i])),
            alts,
        )
    out.print(table)
    mean_loss = float(t.loss[:-1].mean()) if len(t) > 1 else float("nan")
    out.print(f"mean loss {_fmt(mean_loss)} nats · perplexity {_fmt(math.exp(mean_loss), 2)}")


@app.command("generate")
@friendly
@quiet
def generate_cmd(
    prompt: Annotated[str, typer.Argument(help="Prompt; '<eot>' separates chat turns.")],
    model: ModelOpt = "default",
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", "-n")] = 32,
    temperature: Annotated[float, typer.Option(help="0 = greedy.")] = 0.0,
    top_p: Annotated[float, typer.Option("--top-p")] = 1.0,
    top_k: Annotated[int, typer.Option("--top-k", help="0 = off.")] = 0,
    seed: Annotated[int | None, typer.Option()] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per token.")] = False,
    trust_remote_code: RemoteOpt = False,
) -> None:
    """Generate from PROMPT, streaming each token with the probability it had."""
    from lmpeek.api import generate

    m = _load(model, trust_remote_code)
    steps = generate(
        m, prompt, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k, seed=seed
    )
    if not as_json:
        out.print(Text(prompt, style="dim"), end="")
    for s in steps:
        if as_json:
            row = {
                "index": s.index,
                "token": s.token,
                "token_id": s.token_id,
                "prob": s.prob,
                "entropy": s.entropy,
                "top": list(zip(s.topk_tokens[:5], s.topk_probs[:5].tolist(), strict=False)),
            }
            sys.stdout.write(json.dumps(row, ensure_ascii=False) + "\n")
            sys.stdout.flush()
            continue
        style = "green" if s.prob >= 0.5 else "yellow" if s.prob >= 0.1 else "red"
        out.print(Text(s.token, style=style), Text(f"[{s.prob:.2f}]", style="dim"), sep="", end="")
    if not as_json:
        out.print()


@app.command("check")
@friendly
@quiet
def check_cmd(
    source: Annotated[str, typer.Argument(help="Model: 'default', folder, hub id, .gguf, tiny:ARCH.")],
    text: Annotated[str | None, typer.Option(help="Text to run the check on.")] = None,
    rtol: Annotated[float, typer.Option(help="Tolerance relative to the reference's scale.")] = 1e-4,
    trust_remote_code: RemoteOpt = False,
) -> None:
    """Verify every hook point of a model against a plain transformers forward."""
    from lmpeek.api import check

    m = _load(source, trust_remote_code)
    rows = check(m, text, rtol=rtol) if text is not None else check(m, rtol=rtol)
    table = Table(
        title=f"{m.name} ({m.architecture}, adapter '{m.bound.adapter.name}')", title_justify="left"
    )
    for col in ("hook point", "compared with", "max |dev|", "scale", "ok", "worst at"):
        table.add_column(col, justify="right" if col in ("max |dev|", "scale") else "left")
    for r in rows:
        table.add_row(
            Text(r.hook),
            Text(r.against),
            f"{r.max_dev:.2e}",
            f"{r.scale:.3g}",
            Text("ok", style="green") if r.ok else Text("FAIL", style="bold red"),
            r.worst,
        )
    out.print(table)
    if m.bound.adapter.note:
        out.print(f"note: {m.bound.adapter.note}")
    failed = [r for r in rows if not r.ok]
    if failed:
        out.print(f"[bold red]{len(failed)} of {len(rows)} checks failed[/]: do not trust those hook points.")
        raise typer.Exit(1)
    out.print(f"[green]all {len(rows)} checks passed[/] (tolerance {rtol:g} × scale)")


@app.command("serve")
@friendly
def serve_cmd(
    model: Annotated[
        str, typer.Argument(help="'default', a HF folder, a hub id in the local cache, .gguf, tiny:ARCH")
    ] = "default",
    host: Annotated[str, typer.Option(help="Interface to listen on (loopback by default).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535)] = 8000,
    samples: Annotated[
        str | None, typer.Option(help="A folder of your own sample texts (.txt, .md, .jsonl) to offer.")
    ] = None,
    store_dir: Annotated[
        str | None, typer.Option(help="Folder for stored traces (default: <lmpeek cache>/traces).")
    ] = None,
    store_budget: Annotated[
        str | None,
        typer.Option(
            help="Disk the stored traces may take, e.g. 4G or 500M (default: $LMPEEK_STORE_BUDGET, else 4G)."
        ),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(
            envvar="LMPEEK_TOKEN",
            help="Require this token from every client (generated when --host is not loopback).",
        ),
    ] = None,
    allow_host: Annotated[
        list[str] | None,
        typer.Option(help="Also answer to this Host name (repeatable; loopback names always; '*' = any)."),
    ] = None,
    cors_origin: Annotated[
        list[str] | None,
        typer.Option(help="Let pages from this origin call the API, e.g. http://localhost:5173 (repeatable)"),
    ] = None,
) -> None:
    """Start the web app; the page shows the model's loading progress until it is ready."""
    import os
    from urllib.parse import quote

    import uvicorn

    from lmpeek.samples.library import ENV_VAR
    from lmpeek.server.app import create_app
    from lmpeek.server.guard import is_loopback

    if samples is not None:
        if not os.path.isdir(samples):
            _fail(f"--samples: no such folder: {samples}")
        os.environ[ENV_VAR] = os.path.abspath(samples)

    edge = _edge_settings(host, token, allow_host or [], cors_origin or [])
    url_host = "127.0.0.1" if host in ("0.0.0.0", "") else "::1" if host == "::" else host
    url = f"http://{f'[{url_host}]' if ':' in url_host else url_host}:{port}/"
    if edge["token"] is not None:
        url += f"?token={quote(edge['token'], safe='')}"
    if not is_loopback(host):
        names = ", ".join(sorted({"127.0.0.1", "localhost", "[::1]", *edge["allowed_hosts"]}))
        err.print(
            f"[yellow]note:[/] listening on {host}: clients need the token in the URL below; "
            f"Host names answered: {names} (add more with --allow-host NAME)",
            soft_wrap=True,
        )
    out.print(f"lmpeek: serving {model} at {url}", soft_wrap=True)
    web_app = create_app(model, store_dir=store_dir, store_budget=store_budget, **edge)
    # SIGTERM / Ctrl+C: stop within seconds even with streams open (the app cancels their jobs)
    uvicorn.run(web_app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=3)


def _edge_settings(host: str, token: str | None, allow_host: list[str], cors_origin: list[str]) -> dict:
    """What `lmpeek serve` asks of clients: a token on any non-loopback bind (generated unless given),
    the Host names it answers to (loopback, the name it binds to, --allow-host), CORS origins."""
    import secrets

    from lmpeek.server.guard import is_loopback

    if token is not None and not token.strip():
        _fail("--token must not be empty")
    if token is None and not is_loopback(host):
        token = secrets.token_urlsafe(32)
    hosts = list(allow_host)
    if host not in ("0.0.0.0", "::", ""):
        hosts.append(host)
    return {"token": token, "allowed_hosts": hosts, "cors_origins": list(cors_origin)}


@app.command("models")
@friendly
def models_cmd() -> None:
    """List supported architectures, tiny test models and the conversion cache."""
    from lmpeek.models.adapters import REGISTRY
    from lmpeek.models.sources import cache_dir, cached_models
    from lmpeek.models.tiny import TINY_ARCHITECTURES

    table = Table(title="Supported architectures (Hugging Face model_type)", title_justify="left")
    table.add_column("adapter")
    table.add_column("model_type")
    table.add_column("notes")
    for a in REGISTRY:
        table.add_row(a.name, ", ".join(a.model_types), a.note)
    table.add_row("generic", "other llama-like layouts", "found by looking; verify with `lmpeek check`")
    out.print(table)
    out.print("tiny random models: " + ", ".join(f"tiny:{a}" for a in TINY_ARCHITECTURES))
    rows = cached_models()
    out.print(f"cache: {cache_dir()}" + ("" if rows else " (empty)"))
    for r in rows:
        out.print(f"  {r.get('name')}  {r.get('size', 0) / 1e6:.0f} MB  {r.get('path')}")


def main() -> None:
    try:
        app()
    except LmpeekError as e:
        err.print(f"[bold red]error:[/] {e}", soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
