"""An Attribution (lmpeek.attribute) in a notebook.

- `table_html(a)`: `Attribution._repr_html_`, static HTML with no script: the text's segments as a heat
  row (diverging RdBu: red raised the target, blue lowered it, white 0, limits ±max |score|, as the
  app's WhyScores), a table of each segment's signed score with a bar, F(x), F(x') and δ, and for a span
  target the token × input matrix with row and column totals.
- `show(a, model)`: `lmpeek.show(attribution, model=…)`, the app's own page open on its Why tab, the
  attribution recorded as the answer to the request the page makes (views/export.py put_why: nothing is
  computed again), inline as the exports are (iframe_html).

Every number is the Attribution's own (scores, totals = rows summed); checked in
tests/views/test_attribution_html.py against the object's arrays (and the page in Chromium).
"""

from __future__ import annotations

import html
from typing import Any

import numpy as np

# d3-scale-chromatic's RdBu scheme (11 stops), interpolated linearly in RGB
_RDBU = ["#67001f", "#b2182b", "#d6604d", "#f4a582", "#fddbc7", "#f7f7f7", "#d1e5f0", "#92c5de", "#4393c3",
         "#2166ac", "#053061"]  # fmt: skip


def colour(v: float, vmax: float) -> str:
    """The diverging colour of v on [-vmax, vmax] (red positive, blue negative, near-white 0)."""
    t = 0.5 - 0.5 * max(-1.0, min(1.0, v / vmax if vmax > 0 else 0.0))
    x = t * (len(_RDBU) - 1)
    i = min(int(x), len(_RDBU) - 2)
    f = x - i
    a = [int(_RDBU[i][k : k + 2], 16) for k in (1, 3, 5)]
    b = [int(_RDBU[i + 1][k : k + 2], 16) for k in (1, 3, 5)]
    return "#" + "".join(f"{round(p + (q - p) * f):02x}" for p, q in zip(a, b, strict=True))


def _esc(s: str) -> str:
    return html.escape(s, quote=True)


def _score(v: float) -> str:
    s = f"{v:+.3f}"
    return "+0.000" if s == "-0.000" else s


def table_html(a: Any) -> str:
    """Static HTML of an Attribution (see the module docstring)."""
    total = np.asarray(a.total, dtype=float)
    vmax = max(float(np.abs(total).max()) if total.size else 0.0, 1e-12)
    font = "font: 13px/1.8 ui-monospace, Menlo, monospace"
    row = "".join(
        f'<span class="lmpeek-seg" data-score="{_score(v)}" title="{_esc(repr(lab))}: {_score(v)}" '
        f'style="background:{colour(v, vmax)};color:{"#fff" if abs(v) / vmax > 0.6 else "#111"};'
        f'white-space:pre">{_esc(lab)}</span>'
        for lab, v in zip(a.segments.labels, total, strict=True)
    )
    fx, fb, d = float(np.sum(a.f_input)), float(np.sum(a.f_baseline)), float(np.sum(a.delta))
    rel = abs(d) / max(abs(fx - fb), 1e-12)
    meta = (f"<b>{_esc(a.method)}</b> · target <b>{_esc(a.target)}</b> · baseline {_esc(a.baseline)} · "
            f"F(x) {fx:.4f} · F(x') {fb:.4f} · δ {d:+.4f} ({rel:.1%}) · {a.forwards} forwards")  # fmt: skip
    bars = []
    for lab, v in zip(a.segments.labels, total, strict=True):
        w = abs(v) / vmax * 50
        left = 50 - w if v < 0 else 50
        bars.append(
            f'<tr><td style="white-space:pre;max-width:16em;overflow:hidden">{_esc(lab)}</td>'
            f'<td style="width:240px"><div style="position:relative;height:11px">'
            f'<div style="position:absolute;left:50%;top:0;bottom:0;border-left:1px solid #ccc"></div>'
            f'<div style="position:absolute;top:1px;bottom:1px;left:{left:.2f}%;width:{w:.2f}%;'
            f'background:{"#2563eb" if v < 0 else "#dc2626"}"></div></div></td>'
            f'<td class="lmpeek-bar-score" style="text-align:right">{_score(v)}</td></tr>'
        )
    parts = [f'<div class="lmpeek-attribution" style="{font}">', f"<div>{meta}</div>",
             f'<p style="margin:6px 0">{row}</p>']  # fmt: skip
    if a.scores.shape[0] > 1:
        parts.append(_matrix_html(a))
    parts.append(f'<table style="border-collapse:collapse;font-size:12px">{"".join(bars)}</table></div>')
    return "".join(parts)


def _matrix_html(a: Any) -> str:
    """The token × input matrix (rows: target tokens; columns: segments) with row and column totals."""
    s = np.asarray(a.scores, dtype=float)
    vmax = max(float(np.abs(s).max()), 1e-12)
    head = "".join(f'<th style="font-weight:normal;writing-mode:vertical-rl;transform:rotate(180deg);'
                   f'white-space:pre">{_esc(c)}</th>' for c in a.segments.labels)  # fmt: skip
    rows = []
    for lab, r in zip(a.target_labels, s, strict=True):
        cells = "".join(
            f'<td class="lmpeek-cell" data-score="{_score(v)}" title="{_score(v)}" '
            f'style="width:14px;height:14px;background:{colour(v, vmax)}"></td>'
            for v in r
        )
        rows.append(f'<tr><th style="font-weight:normal;text-align:right;white-space:pre">{_esc(lab)}</th>'
                    f'{cells}<td style="padding-left:6px">{_score(float(r.sum()))}</td></tr>')  # fmt: skip
    return (f'<table class="lmpeek-matrix" style="border-collapse:collapse;font-size:11px;margin:6px 0">'
            f'<tr><th></th>{head}<th>row Σ</th></tr>{"".join(rows)}</table>')  # fmt: skip


def _finite(x: Any) -> Any:
    """Strict JSON: inf and NaN become null (as the server sends them)."""
    if isinstance(x, float):
        return x if np.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_finite(v) for v in x]
    return x


class AttributionView:
    """What `lmpeek.show(attribution, model=…)` returns: the app's page, open on the Why tab, inline."""

    def __init__(self, page: str):
        self.page = page

    def _repr_html_(self) -> str:
        from lmpeek.views.export import iframe_html

        return iframe_html(self.page)


def request_body(a: Any) -> dict[str, Any]:
    """The POST /api/why/attribute body the page is given for an Attribution (any body works: the page
    posts back the one it is told was recorded)."""
    return {"text": a.text, "method": a.method, "features": a.segments.kind, "faithfulness": False}


def show(a: Any, model: Any = None) -> Any:
    """The app's Why tab showing `a` (with `model`: a LoadedModel, Session or source, whose Session runs
    the text once for the Explore tab); without a model, the static table (`table_html`)."""
    if model is None:

        class _Static:
            def _repr_html_(self) -> str:
                return table_html(a)

        return _Static()
    from lmpeek.views.export import Include, export_html
    from lmpeek.views.widget import session_for

    session = session_for(model)
    result = {**a.to_dict(), "faithfulness": None, "cached": False}
    inc = Include(why_answer=(request_body(a), _finite(result)))
    return AttributionView(export_html(session, session.trace(a.text).id, inc, view="why"))
