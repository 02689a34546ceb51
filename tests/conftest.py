"""The test session's temporary directories: short enough for the runs' ipc socket paths.

A run keeps its ipc sockets in <run dir>/sock/, and Linux caps a socket path at 107 bytes. pytest's own
base directory, /tmp/pytest-of-<user>/pytest-<n>/ (and popen-gw<i>/ under pytest-xdist), before each
test's directory of up to 32 characters, grows with the user's name and with pytest's counter (three
digits on a machine where many sessions ran) and left a run id as few as 10 characters. Unless
--basetemp names one, the session takes a directory of its own, /tmp/hp-XXXXXXXX, and removes it when
every test passed (a failed session keeps it, as pytest keeps its last three, to look into).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

MADE = pytest.StashKey[Path]()  # the base directory this session made, to remove


def pytest_configure(config: pytest.Config) -> None:
    # xdist's workers are given their directories (popen-gw<i>) under the controller's
    if config.option.basetemp is None and not hasattr(config, "workerinput"):
        config.option.basetemp = tempfile.mkdtemp(prefix="hp-")
        config.stash[MADE] = Path(config.option.basetemp)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    made = session.config.stash.get(MADE, None)
    if made is not None and exitstatus == pytest.ExitCode.OK:
        shutil.rmtree(made, ignore_errors=True)
