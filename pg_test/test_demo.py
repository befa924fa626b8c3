"""The scenario `make demo` runs keeps working."""

import os
import subprocess

from harness import HERE, free_port


def test_demo_runs_end_to_end():
    env = dict(os.environ, DEMO_DIR="/tmp/pg_migrate_demo_test", DEMO_PORT=str(free_port()))
    try:
        out = subprocess.run([str(HERE / "demo.sh")], env=env, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stdout + out.stderr
        text = out.stdout + out.stderr
        for expected in [
            "already_applied",
            "version 2 was already applied with a different checksum",
            "statement 2 (line 4): syntax error at or near \"NUL\"",
            "rolled back, retrying in",
            "pg_migrate: index-create-blocking: CREATE INDEX on public.orders blocks writes",
            "psql-hotfix",
            "add-column-inline-constraint",
            "guard_override",
            "public.orders_shipped_at",
            "make stop",
        ]:
            assert expected in text, expected
    finally:
        subprocess.run([str(HERE / "cluster.sh"), "stop", env["DEMO_DIR"]], check=False)
        subprocess.run(["rm", "-rf", env["DEMO_DIR"]], check=False)
