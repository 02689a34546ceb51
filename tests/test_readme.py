"""The README's configuration and event tables stay true to the code."""

from __future__ import annotations

import re
from pathlib import Path

from hotprune.config import settings

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def section(title: str) -> str:
    start = README.index(f"## {title}")
    end = README.find("\n## ", start + 1)
    return README[start:end]


HEADER = "| key | type | default | allowed | meaning |"


def config_table() -> list[str]:
    """The README's configuration table as the config's own fields make it: what each allows is what
    its value is checked against."""
    lines = [HEADER, "| --- | --- | --- | --- | --- |"]
    for _, _, rows in settings():
        lines += [f"| `{s.key}` | {s.kind} | `{s.default}` | {s.allowed} | {s.meaning} |" for s in rows]
    return lines


def readme_config_table() -> list[str]:
    """The table of the Configuration section that starts with the config table's header."""
    lines = section("Configuration").splitlines()
    start = lines.index(HEADER)
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    return lines[start:end]


def test_the_readme_config_table_is_the_one_the_config_makes():
    table = readme_config_table()
    expected = config_table()
    assert table == expected, "the README's configuration table should be:\n" + "\n".join(expected)


def test_every_logged_event_is_in_the_readme_event_table():
    logged = set()
    for path in [*ROOT.glob("service/**/*.py"), *ROOT.glob("workers/*.py")]:
        logged |= set(re.findall(r"\.(?:info|warning|error)\(\s*\"([a-z_]+)\"", path.read_text()))
    table = section("Reading the logs")
    missing = sorted(e for e in logged if f"`{e}`" not in table)
    assert not missing, f"events logged but not in the README's event table: {missing}"
    assert {"compression_finished", "masks_applied", "pruning_planned"} <= logged
