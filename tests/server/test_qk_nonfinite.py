"""GET /api/traces/{id}/qk on a model that really produces inf/NaN (tiny:llama-inf: layer 0's MLP
writes inf, so layer 1's q and k are NaN): the route answers 200 with strict JSON, null where a number
was lost, never HTTP 500; layer 0 (a finite input) still answers every number."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytestmark = pytest.mark.filterwarnings("ignore::lmpeek.capture.trace.NonFiniteWarning")

MODEL = "tiny:llama-inf"  # the client fixture (tests/server/conftest.py) serves it
TEXT = "The capital of France is Paris."


def strict_json(text: str):
    def refuse(constant: str):
        raise AssertionError(f"{constant} in JSON")

    return json.loads(text, parse_constant=refuse)


def qk(client, tid, **params):
    r = client.get(f"/api/traces/{tid}/qk", params=params)
    assert r.status_code == 200, r.text
    return strict_json(r.text)


@pytest.mark.parametrize(("head", "query", "key"), [(0, 3, 1), (1, 5, 5), (3, 0, 0)])
def test_qk_of_a_layer_that_lost_its_numbers_answers_nulls(client, tid, head, query, key):
    a = qk(client, tid, layer=1, head=head, query=query, key=key)
    assert [p["name"] for p in a["parts"]] == ["rotated", "unrotated"]
    for p in a["parts"]:
        assert p["score"] is None and p["dot"] is None
        assert len(p["scores"]) == len(p["weights"]) == query + 1
        assert all(v is None for v in p["scores"] + p["weights"])  # no softmax of lost scores, no 0
    # the model's own pattern row (from its kernel, not qk_terms) lost its numbers too
    assert a["pattern_row"] == [None] * (query + 1)


def test_qk_of_the_finite_layer_keeps_every_number(client, tid):
    """Layer 0 reads the embeddings (finite): its scores and weights are all numbers, a softmax row."""
    a = qk(client, tid, layer=0, head=1, query=4, key=2)
    np.testing.assert_allclose(a["parts"][0]["weights"], a["pattern_row"], atol=2e-3)  # the model's row
    for p in a["parts"]:
        assert None not in p["scores"] and None not in p["weights"]
        assert sum(p["weights"]) == pytest.approx(1.0, abs=1e-9)
        s = np.asarray(p["scores"])
        np.testing.assert_allclose(p["weights"], np.exp(s - s.max()) / np.exp(s - s.max()).sum(), rtol=1e-9)
