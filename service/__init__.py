"""hotprune: prune a reinforcement-learning policy while it trains (the Python API: docs/api.md).

    import hotprune
    result = hotprune.run(hotprune.Config.from_dict({"env_id": "CartPole-v1", "total_steps": 20000}))
    actions = hotprune.load_policy(result.run_dir).predict(observations)

`import hotprune` imports nothing more: each public name is imported when first used (PEP 562), so the
command line and the processes of a run start without what they do not need (torch above all).
"""

from __future__ import annotations

import importlib

# name -> the module that defines it
_PUBLIC = {
    "Config": "hotprune.config",
    "ConfigError": "hotprune.config",
    "run": "hotprune.api",
    "RunResult": "hotprune.api",
    "RunHandle": "hotprune.api",
    "load_run": "hotprune.api",
    "diagnose": "hotprune.api",
    "Diagnosis": "hotprune.api",
    "evaluate": "hotprune.api",
    "experiments": "hotprune.api",
    "Experiments": "hotprune.api",
    "load_policy": "hotprune.policy_api",
    "Policy": "hotprune.policy_api",
    "import_policy": "hotprune.commands.import_checkpoint",
    "Imported": "hotprune.commands.import_checkpoint",
    "ArtifactError": "hotprune.runs.artifacts",
    "RunError": "hotprune.runs.runlog",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name == "__version__":
        from importlib.metadata import version

        return version("hotprune")
    if name not in _PUBLIC:
        raise AttributeError(f"module 'hotprune' has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value  # the next use is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
