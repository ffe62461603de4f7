"""Shared fixtures: databases, a fast user model, and an environment without a GPU."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY = "tests.tiny_models:tiny_net"
pytest_plugins = ["tests.postgres_server"]  # a real PostgreSQL server, started on demand


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist the workers share the cores: one intra-op thread each, children included."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ["OMP_NUM_THREADS"] = "1"
        import torch

        torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _isolated_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Never touch the user's database, use shipped calibrations or detect a GPU; children find tests/.

    Tests that are about the shipped calibrations delete MEMPROBE_NO_SHIPPED themselves.
    """
    monkeypatch.setenv("MEMPROBE_DB", str(tmp_path / "default.sqlite"))
    monkeypatch.setenv("MEMPROBE_NO_SHIPPED", "1")
    monkeypatch.setenv("MEMPROBE_NO_GPU_DETECT", "1")
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    )
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    """A database file that does not exist yet."""
    return tmp_path / "bench.sqlite"


@pytest.fixture
def fresh_db() -> Iterator[object]:
    """An in-memory database with the current schema."""
    from memprobe.store.database import Database

    database = Database.open(":memory:")
    yield database
    database.close()
