"""The SAE shipped for the default model, and its feature database: real features with no download.

    features.load("default", model)      # the SAE (a SAELens folder in the package)
    shipped.database()                   # its feature database over the demo corpus, or None

Both were made on this project's 2-core CPU by the commands in `data/features/default/MADE.md` (with
their measured FVU and L0), from the bundled demo corpus: `lmpeek sae train` wrote the SAE (float16),
`lmpeek features build` the database. `lmpeek serve` of the default model browses the database and
computes the SAE on your text; any other model is refused, since the SAE reads the default model's
residual stream.

The database ships compressed (xz); `database()` unpacks it once into the lmpeek cache, keyed by its
hash, so a reinstall or a new version of it is never mistaken for the old one.
"""

from __future__ import annotations

import hashlib
import lzma
import os
import shutil
from pathlib import Path
from typing import Any

from lmpeek.errors import InvalidInput

NAME = "default"
FOLDER = Path(__file__).resolve().parents[1] / "data" / "features" / "default"
SAE = FOLDER / "sae"
DATABASE = FOLDER / "features.db.xz"


def _default_model_name() -> str:
    from lmpeek.models.sources import DEFAULT_NAME

    return DEFAULT_NAME


def available() -> bool:
    return (SAE / "cfg.json").is_file() and (SAE / "sae_weights.safetensors").is_file()


def load(spec: Any, model: Any = None, **options: Any):
    """The shipped SAE as a source named "default" (a registered kind: features.load("default"))."""
    if not available():
        raise InvalidInput(f"the SAE shipped for the default model is missing from this installation ({SAE})")
    if model is not None and getattr(model, "name", None) != _default_model_name():
        raise InvalidInput(
            f"'default' is the SAE trained on {_default_model_name()}'s residual stream; {model.name} "
            f"is another model (give a SAELens folder trained on it, or neurons:L)"
        )
    from lmpeek.features.saelens import load as load_sae

    source = load_sae(SAE, model, name=NAME, **options)
    source.spec = NAME  # a database built from it names it "default", not this installation's folder
    return source


def database() -> Path | None:
    """The shipped feature database, unpacked into the lmpeek cache (once), or None if not installed."""
    if not DATABASE.is_file():
        return None
    from lmpeek.models.sources import cache_dir

    digest = hashlib.blake2b(DATABASE.read_bytes(), digest_size=8).hexdigest()
    target = cache_dir() / "features" / f"default-{digest}.db"
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
        with lzma.open(DATABASE) as src, tmp.open("wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        os.replace(tmp, target)  # atomic: another process unpacking at once writes the same bytes
    return target
