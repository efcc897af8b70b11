"""Sample texts to look at: a bundled library (prose, code, math, chat, ...) plus the user's own files.

from lmpeek import samples
samples.get("prose-lighthouse").text
[s.id for s in samples.library("~/my-samples")]
"""

from __future__ import annotations

from lmpeek.samples.library import (
    ENV_VAR,
    KINDS,
    MAX_USER_FILE_BYTES,
    Sample,
    SampleWarning,
    UnknownSample,
    bundled,
    descriptions,
    get,
    library,
    load_user_samples,
)

__all__ = [
    "ENV_VAR",
    "KINDS",
    "MAX_USER_FILE_BYTES",
    "Sample",
    "SampleWarning",
    "UnknownSample",
    "bundled",
    "descriptions",
    "get",
    "library",
    "load_user_samples",
]
