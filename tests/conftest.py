"""Shared fixtures. The autouse guard fails any test that leaves threads running behind it."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "models"


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
