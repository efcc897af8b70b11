"""The README documents what exists: every command, every architecture, every hook point kind."""

from __future__ import annotations

import pathlib
import re

import lmpeek
from lmpeek.cli import app
from lmpeek.models.adapters import REGISTRY
from lmpeek.models.tiny import tiny_hf_model

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_quick_start_is_two_commands():
    block = README.split("## Quick start", 1)[1].split("```", 2)[1]
    assert [line.strip() for line in block.strip().splitlines()] == ["make run", "make test"]


def test_every_command_is_documented():
    for command in app.registered_commands:
        assert f"lmpeek {command.name}" in README, command.name
    for group in app.registered_groups:  # lmpeek features build, lmpeek sae train, ...
        for command in group.typer_instance.registered_commands:
            assert f"lmpeek {group.name} {command.name}" in README, (group.name, command.name)


def test_every_architecture_is_documented():
    for adapter in REGISTRY:
        assert adapter.name in README, adapter.name


def test_every_hook_point_kind_is_documented():
    from lmpeek.models.adapters import bind

    names = bind(tiny_hf_model("gpt2")[0]).hook_names() + bind(tiny_hf_model("llama")[0]).hook_names()
    kinds = {re.sub(r"blocks\.\d+\.", "", n).split(".")[-1] for n in names}
    for kind in kinds:
        assert kind in README, kind


def test_version_matches_pyproject():
    version = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M)
    assert version and version.group(1) == lmpeek.__version__


def test_every_image_the_readme_shows_exists():
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", README)
    assert "docs/attention.png" in images
    missing = [p for p in images if not (ROOT / p).is_file()]
    assert not missing, f"README shows images that are not in the repository: {missing}"
