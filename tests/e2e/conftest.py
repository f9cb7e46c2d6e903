"""Fixtures for end-to-end tests: a lab, and the daemon running on it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from dropwatch.lab import LAB_RULES, Lab, lab
from tests.e2e.helpers import RunningDaemon, start_daemon


@pytest.fixture
def env(tmp_path: Path) -> Iterator[tuple[Lab, Path, Path, Path]]:
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump(LAB_RULES, sort_keys=False))
    with lab() as lb:
        yield lb, rules, tmp_path / "history.db", tmp_path / "daemon.log"


@pytest.fixture
def daemon(env: tuple[Lab, Path, Path, Path]) -> Iterator[tuple[Lab, RunningDaemon]]:
    lb, rules, db, logp = env
    d = start_daemon(lb, rules, db, logp)
    try:
        yield lb, d
    finally:
        if d.proc.poll() is None:
            d.stop()
