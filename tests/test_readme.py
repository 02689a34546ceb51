"""The README's configuration and event tables stay true to the code."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from service.config import Config

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def section(title: str) -> str:
    start = README.index(f"## {title}")
    end = README.find("\n## ", start + 1)
    return README[start:end]


def config_keys() -> set[str]:
    keys = set()
    for f in dataclasses.fields(Config):
        default = getattr(Config(), f.name)
        if dataclasses.is_dataclass(default):
            keys |= {f"{f.name}.{g.name}" for g in dataclasses.fields(default)}
        else:
            keys.add(f.name)
    return keys


def test_every_config_key_is_in_the_readme_table_and_nothing_else():
    documented = set()
    for line in section("Configuration").splitlines():
        if line.startswith("| `"):
            documented |= set(re.findall(r"`([a-z_.*]+)`", line.split(" | ")[0]))
    wildcards = {k[:-1] for k in documented if k.endswith(".*")}
    covered = {k for k in config_keys() if k in documented or any(k.startswith(w) for w in wildcards)}
    assert covered == config_keys(), f"undocumented keys: {sorted(config_keys() - covered)}"
    stale = {k for k in documented if not k.endswith(".*")} - config_keys()
    assert not stale, f"the README documents keys that do not exist: {sorted(stale)}"


def test_every_logged_event_is_in_the_readme_event_table():
    logged = set()
    for path in [*ROOT.glob("service/*.py"), *ROOT.glob("workers/*.py")]:
        logged |= set(re.findall(r"\.(?:info|warning|error)\(\s*\"([a-z_]+)\"", path.read_text()))
    table = section("Reading the logs")
    missing = sorted(e for e in logged if f"`{e}`" not in table)
    assert not missing, f"events logged but not in the README's event table: {missing}"
    assert {"compression_finished", "masks_applied", "pruning_planned"} <= logged
