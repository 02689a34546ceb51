"""Experiment grids declared in TOML files: `hotprune experiments --grid FILE.toml`, and the built-in grids
(`--experiment NAME` reads hotprune/grids/NAME.toml, shipped with the package) through the same code.

    # what the grid compares: the first variant is the reference the others are tested against
    seeds = [1, 2, 3]                    # optional, the default of --seeds

    [[variant]]
    name = "dense"                       # its runs: <root>/pruning_<grid>/<name>/s<seed>
    settings = { pruning.method = "none" }   # as in a config file

    [[variant]]
    name = "ticket_magnitude_80"
    stage = 1                            # optional: runs after stage 0 and the grid's prepare step
    seed_offset = 1000                   # optional: the run's seed is its row's seed + 1000
    settings = { pruning.mask_file = "{base}/masks/s{seed}/magnitude-80.safetensors" }

    [prepare]                            # optional: what runs between stage 0 and stage 1
    step = "lth_masks"                   # masks of each seed's dense run (hotprune lth create-mask)
    methods = ["magnitude"]
    sparsities = [0.8]

`{base}` (the grid's directory) and `{seed}` in a setting's string are filled in per run. A grid is
named by its file (`basic.toml` runs in `<root>/pruning_basic`). Every run's settings are checked
when the grid is planned, before anything runs (`experiments.plan`); the file itself is checked here,
each fault one line naming the file.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from hotprune.config import ConfigError, as_overrides
from hotprune.pruning.criteria import CRITERIA

BUILTIN_DIR = Path(__file__).resolve().parent.parent / "grids"
GRID_KEYS = ("seeds", "variant", "prepare")
VARIANT_KEYS = ("name", "settings", "stage", "seed_offset")
RESERVED = ("masks", "report")  # directories of the grid itself, beside its variants'


@dataclass(frozen=True)
class Variant:
    """A run's overrides (`--set` strings; `{base}` and `{seed}` filled in per run). Stage 1 runs after
    stage 0 and the grid's prepare step (lth: masks from stage 0's dense runs). A seed offset gives the
    run another seed than its row's (lth's random re-initialisation: the dense run's seed would draw
    the dense run's own initial weights, the ticket itself)."""

    name: str
    overrides: tuple[str, ...]
    stage: int = 0
    seed_offset: int = 0


@dataclass(frozen=True)
class Grid:
    name: str
    variants: tuple[Variant, ...]
    seeds: tuple[int, ...] = (1, 2, 3)
    prepare: dict | None = None  # the [prepare] table, its step checked against PREPARE
    path: Path | None = None  # the file it was read from, which errors name


def lth_mask(method: str, sparsity: float) -> str:
    """Where the lth_masks step writes a seed's mask, under the grid's directory; the grid's tickets name
    the same files."""
    return f"{{base}}/masks/s{{seed}}/{method}-{round(sparsity * 100)}.safetensors"


def _lth_masks(base: Path, seeds: list[int], table: dict, log) -> None:
    from hotprune.commands import lth  # noqa: PLC0415 -- torch: only when a grid prepares masks

    lth.grid_masks(base, seeds, table["methods"], table["sparsities"], lth_mask, log)


def _lth_masks_fault(table: dict) -> str | None:
    methods, sparsities = table.get("methods"), table.get("sparsities")
    if not isinstance(methods, list) or not methods or any(m not in CRITERIA for m in methods):
        return f"methods must be a non-empty list of {'|'.join(CRITERIA)}, got {methods!r}"
    if not isinstance(sparsities, list) or not sparsities or \
            any(isinstance(s, bool) or not isinstance(s, (int, float)) or not 0 < s < 1 for s in sparsities):
        return f"sparsities must be a non-empty list of numbers in (0, 1), got {sparsities!r}"
    return None


# step -> (what it does, what is wrong with its table or None)
PREPARE: dict[str, tuple[Callable[[Path, list[int], dict, Any], None], Callable[[dict], str | None]]] = {
    "lth_masks": (_lth_masks, _lth_masks_fault),
}


def builtin_names() -> list[str]:
    return sorted(p.stem for p in BUILTIN_DIR.glob("*.toml"))


def builtin(name: str) -> Grid:
    """A built-in grid by name (`--experiment NAME`)."""
    if name not in builtin_names():
        raise ConfigError(f"--experiment must be one of {'|'.join(builtin_names())}, got {name!r}")
    return load(BUILTIN_DIR / f"{name}.toml")


def load(path: Path) -> Grid:
    """A grid file, checked: each fault is a ConfigError of one line that names the file."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read grid file {path}: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not a TOML file: {exc}") from None
    fault = _grid_fault(data)
    if fault:
        raise ConfigError(f"{path}: {fault}")
    variants = tuple(_variant(v) for v in data["variant"])
    return Grid(path.stem, variants, tuple(data.get("seeds", Grid.seeds)), data.get("prepare"), path)


def _variant(table: dict) -> Variant:
    return Variant(table["name"], tuple(as_overrides(table.get("settings", {}))), table.get("stage", 0),
                   table.get("seed_offset", 0))


def _grid_fault(data: dict) -> str | None:
    unknown = [k for k in data if k not in GRID_KEYS]
    if unknown:
        return f"unknown key {unknown[0]!r} (a grid file has {', '.join(GRID_KEYS)})"
    seeds = data.get("seeds", Grid.seeds)
    if not isinstance(seeds, list | tuple) or not seeds or \
            any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds):
        return f"seeds must be a non-empty list of non-negative integers, got {seeds!r}"
    variants = data.get("variant")
    if not isinstance(variants, list) or not variants:
        return "no [[variant]]: a grid needs at least one"
    names = [v.get("name") for v in variants]
    for i, variant in enumerate(variants, 1):
        fault = _variant_fault(variant)
        if fault:
            return f"variant {i} ({variant.get('name', 'unnamed')}): {fault}"
    twice = next((n for n in names if names.count(n) > 1), None)
    if twice:
        return f"two variants are named {twice!r}"
    prepare = data.get("prepare")
    if prepare is not None:
        step = prepare.get("step") if isinstance(prepare, dict) else None
        if step not in PREPARE:
            return f"[prepare] step must be one of {'|'.join(PREPARE)}, got {step!r}"
        fault = PREPARE[step][1](prepare)
        if fault:
            return f"[prepare] {fault}"
    return None


def _variant_fault(variant: Any) -> str | None:
    if not isinstance(variant, dict):
        return "must be a table"
    unknown = [k for k in variant if k not in VARIANT_KEYS]
    if unknown:
        return f"unknown key {unknown[0]!r} (a variant has {', '.join(VARIANT_KEYS)})"
    name = variant.get("name")
    if not isinstance(name, str) or not name or name.startswith(".") or name in RESERVED or \
            not all(ch.isalnum() or ch in "-_." for ch in name):
        return (f"name must be letters, digits, - _ . (a directory name), not starting with . and not "
                f"{' or '.join(RESERVED)}, got {name!r}")
    if not isinstance(variant.get("settings", {}), dict):
        return "settings must be a table, as in a config file"
    if variant.get("stage", 0) not in (0, 1) or isinstance(variant.get("stage"), bool):
        return f"stage must be 0 or 1, got {variant['stage']!r}"
    offset = variant.get("seed_offset", 0)
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        return f"seed_offset must be a non-negative integer, got {offset!r}"
    return None
