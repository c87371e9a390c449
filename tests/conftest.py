"""Shared fixtures. The autouse guard fails any test that leaves threads running behind it.

A test skipped because an installed dependency is missing (its reason starts with MISSING, see `missing`) is a
failure in CI (CI=true): there the install step must have provided everything, and a skip would hide a broken install.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "models"
MISSING = "missing dependency: "
IN_CI = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def missing(what: str) -> str:
    """The skip reason for a dependency the install step provides (a failure in CI)."""
    return MISSING + what


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, None, None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if IN_CI and report.skipped and MISSING in str(report.longrepr):
        report.outcome = "failed"
        report.longrepr = f"in CI a missing dependency fails the test (scripts/install.sh provides it): " \
                          f"{report.longrepr}"


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    before = {t.ident for t in threading.enumerate()}
    yield
    deadline = time.monotonic() + 10
    while True:
        leaked = [t for t in threading.enumerate() if t.ident not in before and t.is_alive()
                  and not t.name.startswith(("asyncio", "ThreadPoolExecutor", "pydevd", "Dummy"))]
        if not leaked or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert not leaked, f"test leaked threads: {[t.name for t in leaked]}"
