"""End-to-end fixtures: one preloaded cluster per test session, one fresh database per test."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import Cluster  # noqa: E402


@pytest.fixture(scope="session")
def cluster():
    c = Cluster("/tmp/pg_migrate_e2e").start("fsync=off", "synchronous_commit=off")
    yield c
    c.stop()


@pytest.fixture
def db(cluster, request):
    name = "t_" + re.sub(r"[^a-z0-9]+", "_", request.node.name.lower())[:55]
    cluster.create_database(name)
    yield name
    cluster.drop_database(name)


@pytest.fixture
def conn(cluster, db):
    with cluster.connect(db) as c:
        yield c


ROOT = Path(__file__).resolve().parent.parent
CLI = Path(os.environ.get("PG_MIGRATE_CLI", ROOT / "cli/target/debug/pg-migrate"))


@pytest.fixture(scope="session")
def cli_bin() -> Path:
    """The pg-migrate binary (PG_MIGRATE_CLI, else a debug build made here once)."""
    if not CLI.exists():
        subprocess.run(["cargo", "build", "--manifest-path", str(ROOT / "cli/Cargo.toml")], check=True,
                       env={**os.environ, "CARGO_TARGET_DIR": str(ROOT / "cli/target")})
    return CLI
