"""An Attribution in a notebook (views/attribution_html.py): `_repr_html_` draws the object's own
numbers (heat row, bars, a span's matrix) in RdBu as the app does, and `lmpeek.show(attribution,
model=…)` is the app's page with the attribution recorded as the Why tab's answer (nothing recomputed)."""

from __future__ import annotations

import html
import json
import re
import warnings

import numpy as np
import pytest

import lmpeek
from lmpeek.views.attribution_html import AttributionView, colour, request_body
from lmpeek.views.features_export import post_key
from tests.views.test_export import block, body, unpack

TEXT = "The cat sat on the mat and then it"


@pytest.fixture(scope="module")
def model():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return lmpeek.load("tiny:llama", progress=False)


def _scores(page: str, cls: str) -> list[float]:
    return [float(v) for v in re.findall(rf'class="{cls}" data-score="([^"]+)"', page)]


def test_colours_are_the_apps_rdbu():
    assert colour(0, 1) == "#f7f7f7"  # d3 RdBu's middle
    assert colour(1, 1) == "#67001f" and colour(-3, 1) == "#053061"  # red up, blue down, clamped
    assert colour(5, 0) == "#f7f7f7"


def test_repr_html_shows_the_objects_numbers(model):
    a = lmpeek.attribute(model, TEXT, method="occlusion", features="words")
    page = a._repr_html_()
    assert "<script" not in page
    np.testing.assert_allclose(_scores(page, "lmpeek-seg"), a.total, atol=0.0005 + 1e-9)
    bars = [float(v) for v in re.findall(r'class="lmpeek-bar-score"[^>]*>([^<]+)<', page)]
    np.testing.assert_allclose(bars, a.total, atol=0.0005 + 1e-9)
    assert "lmpeek-matrix" not in page and html.escape(a.target) in page


def test_a_span_draws_its_matrix(model):
    a = lmpeek.attribute(model, TEXT, method="occlusion", features="words", span=" asleep on the rug")
    page = a._repr_html_()
    cells = np.array(_scores(page, "lmpeek-cell")).reshape(a.scores.shape)
    np.testing.assert_allclose(cells, a.scores, atol=0.0005 + 1e-9)
    np.testing.assert_allclose(_scores(page, "lmpeek-seg"), a.total, atol=0.0005 + 1e-9)


def test_show_records_the_attribution_as_the_why_tabs_answer(model):
    a = lmpeek.attribute(model, TEXT, method="gradient_x_input", features="words")
    view = lmpeek.show(a, model=model)
    assert isinstance(view, AttributionView) and "<iframe srcdoc=" in view._repr_html_()
    assert 'view: "why"' in view.page
    header, data = unpack(block(view.page))
    events = [json.loads(x[6:]) for x in body(header, data, post_key("/api/why/attribute", request_body(a)))
              .decode().splitlines() if x.startswith("data: ")]  # fmt: skip
    assert events[0]["cached"] and events[-1]["scores"] == a.scores.tolist()
    assert json.loads(body(header, data, "GET /api/why/methods"))["recorded"] == [request_body(a)]
    assert "lmpeek-seg" in lmpeek.show(a)._repr_html_()  # no model: the static view
