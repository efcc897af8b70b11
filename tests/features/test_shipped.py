"""The SAE shipped for the default model and its feature database (features/shipped.py): real features
with no download. Checked against the model itself: the SAE reconstructs the residual stream it was
trained on, and the database's stored examples are what the SAE computes on those tokens now."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from lmpeek import features
from lmpeek.errors import InvalidInput
from lmpeek.features import shipped
from lmpeek.features.sources import FeatureSourceWarning

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model(default_model_resolved):
    import lmpeek

    return lmpeek.load("default", progress=False)


def test_the_files_are_in_the_package():
    assert shipped.available() and shipped.DATABASE.is_file()
    made = (shipped.FOLDER / "MADE.md").read_text()
    assert "lmpeek sae train" in made and "lmpeek features build" in made
    cfg = json.loads((shipped.SAE / "cfg.json").read_text())
    assert cfg["d_in"] == 576 and cfg["metadata"]["hook_name"] == "blocks.14.hook_resid_post"
    size = sum(p.stat().st_size for p in shipped.FOLDER.rglob("*") if p.is_file())
    assert size < 20 * 2**20  # a few MB of float16 weights and the compressed database


def test_default_sae_reconstructs_the_default_model(model):
    with warnings.catch_warnings():
        warnings.simplefilter("error", FeatureSourceWarning)  # the hook-parity guard stays silent
        src = features.load("default", model)
    assert src.name == "default" and src.n_features == 2048
    r = features.check_reconstruction(model, src)
    assert r.ok and r.fvu < 0.5
    assert r.l0 == pytest.approx(32, abs=0.01)  # TopK: exactly k active features per token


def test_default_sae_is_refused_on_another_model():
    import lmpeek

    with pytest.raises(InvalidInput, match="trained on SmolLM2"):
        features.load("default", lmpeek.load("tiny:llama"))


def test_shipped_database_holds_what_the_sae_computes(model):
    db = features.FeatureDB(shipped.database(), tokenizer=model.tokenizer)
    assert [s["name"] for s in db.sources] == ["default"]
    assert db.manifest["model"]["fingerprint"] == model.fingerprint
    assert db.manifest["corpus"]["inputs"][0].startswith("demo:")
    assert db.sources[0]["spec"] == "default"  # no path of the machine that built it
    assert all(p.startswith("demo:") for (p,) in db._conn.execute("SELECT DISTINCT path FROM documents"))
    src = features.load("default", model, check=False)
    busy = [f for f in db.features(sort="count", descending=True, limit=400)][::80]
    for row in busy:
        top = db.examples(row["feature"], "top", "default")[0]
        doc = db.document(top["doc"])
        acts = features.activations(model, src, doc.tolist(), features=[row["feature"]])[:, 0]
        assert acts[top["pos"]] == pytest.approx(top["score"], rel=1e-3, abs=1e-3)
        assert acts[1:].max() == pytest.approx(row["max"], rel=1e-3) or acts[1:].max() <= row["max"] + 1e-3
        window = np.asarray(top["acts"], dtype=np.float64)
        start = top["start"]
        np.testing.assert_allclose(window, acts[start : start + len(window)], rtol=1e-3, atol=1e-3)


def test_the_app_computes_the_shipped_sae_online(model):
    from lmpeek.features.service import FeatureService

    service = FeatureService([str(shipped.database())], [], model=model)
    (entry,) = service.sources()["sources"]
    assert entry["id"] == "default" and entry["online"] and entry["database"]["tokens"] > 100_000
    r = service.activations("default", "def fibonacci(n):\n    return n", features=[202])
    src = features.load("default", model, check=False)
    want = features.activations(model, src, "def fibonacci(n):\n    return n", features=[202])[:, 0]
    np.testing.assert_allclose(r["values"][0], want, rtol=1e-5, atol=1e-6)
