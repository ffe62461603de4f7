"""A real PostgreSQL server for the tests: started in a temporary folder, stopped at the end.

The server listens only on a Unix socket in that folder. PostgreSQL refuses to run as root,
so as root it runs as the unprivileged system user ``memprobe-pg`` (created if missing).
Tests that use it are skipped, with the reason, where the server binaries are absent.
"""

from __future__ import annotations

import glob
import itertools
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

SERVER_USER = "memprobe-pg"
_numbers = itertools.count()


def _binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


def _as_server_user(command: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return command
    if subprocess.run(["id", "-u", SERVER_USER], capture_output=True).returncode != 0:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SERVER_USER],
            check=True,
            capture_output=True,
        )
    return ["runuser", "-u", SERVER_USER, "--", *command]


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[Path]:
    """The socket folder of a running server (user ``memprobe``, trust authentication)."""
    initdb, pg_ctl = _binary("initdb"), _binary("pg_ctl")
    if initdb is None or pg_ctl is None:
        pytest.skip(
            "PostgreSQL server binaries (initdb, pg_ctl) are not installed: apt-get install postgresql"
        )
    pytest.importorskip("psycopg", reason="psycopg is not installed: pip install 'memprobe[postgres]'")
    folder = Path(tempfile.mkdtemp(prefix="memprobe-pg-"))
    folder.chmod(0o755)
    if os.geteuid() == 0:
        _as_server_user(["true"])  # creates the user
        shutil.chown(folder, SERVER_USER)
    data, log = folder / "data", folder / "server.log"
    try:
        subprocess.run(
            _as_server_user([initdb, "-D", str(data), "-A", "trust", "-U", "memprobe", "-N"]),
            check=True,
            capture_output=True,
        )
        options = f"-k {folder} -c listen_addresses='' -F -c max_connections=50"
        subprocess.run(
            _as_server_user([pg_ctl, "-D", str(data), "-o", options, "-l", str(log), "-w", "start"]),
            check=True,
            capture_output=True,
        )
    except subprocess.CalledProcessError as error:
        shutil.rmtree(folder, ignore_errors=True)
        pytest.fail(f"could not start PostgreSQL: {error.stderr.decode(errors='replace')}")
    try:
        yield folder
    finally:
        subprocess.run(
            _as_server_user([pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"]), capture_output=True
        )
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server: Path) -> str:
    """The URL of a new, empty database on the test server."""
    import psycopg

    name = f"test_{os.getpid()}_{next(_numbers)}"
    with psycopg.connect(
        f"postgresql://memprobe@/postgres?host={postgres_server}", autocommit=True
    ) as server:
        server.execute(f"CREATE DATABASE {name}")
    return f"postgresql://memprobe@/{name}?host={postgres_server}"
