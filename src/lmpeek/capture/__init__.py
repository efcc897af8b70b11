"""Running models with hooks: traces, generation, slices, batched capture (torch lives here)."""


def __getattr__(name: str):
    # `lmpeek.capture.activations` without importing torch when only a torch-free submodule is wanted
    if name == "activations":
        from lmpeek.capture.batched import activations

        return activations
    raise AttributeError(f"module 'lmpeek.capture' has no attribute {name!r}")
