"""`pg-migrate apply --fleet` and `status --fleet` over four clusters on this machine: the
canary first, then the waves, version by version; fingerprints compared after each version;
a target drifted by hand stops the run and is named with what differs."""

import json
import os
import subprocess

import pytest

from harness import Cluster

NAMES = ["canary", "eu", "us", "apac"]
FILES = {
    "V1__orders.sql": "CREATE TABLE orders (id bigint PRIMARY KEY, amount int);\n",
    "V2__status.sql": "ALTER TABLE orders ADD COLUMN status text;\n",
    "V3__index.sql": "CREATE INDEX CONCURRENTLY orders_status ON orders (status);\n",
    "V4__comment.sql": "COMMENT ON TABLE orders IS 'one row per order';\n",
    "V5__customers.sql": "CREATE TABLE customers (id bigint PRIMARY KEY, name text);\n",
}


@pytest.fixture(scope="module")
def clusters():
    started = {name: Cluster(f"/tmp/pg_migrate_e2e_fleet_{name}").start() for name in NAMES}
    yield started
    for c in started.values():
        c.stop()


def fleet_file(path, clusters, db, canary=True):
    lines = ['canary = "canary"', 'waves = [["eu", "us"], ["apac"]]'] if canary else []
    for name, c in clusters.items():
        lines += [f"[targets.{name}]", f"url = \"host={c.sock} port={c.port} user=postgres dbname={db}\""]
    path.write_text("\n".join(lines) + "\n")
    return path


def runner(cli_bin, folder):
    def run(*args):
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG") and k != "DATABASE_URL"}
        env["NO_COLOR"] = "1"
        return subprocess.run([str(cli_bin), "--dir", str(folder), *args], capture_output=True, text=True,
                              env=env, timeout=300)
    return run


def migrations(tmp_path, files):
    folder = tmp_path / "migrations"
    folder.mkdir(exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)
    return folder


def versions(cluster, db):
    with cluster.connect(db) as c:
        return c.execute("SELECT coalesce(array_agg(version ORDER BY version_key), '{}') FROM migrate.history "
                         "WHERE status = 'applied'").fetchone()[0]


def test_a_fleet_gets_every_version_canary_first_then_wave_by_wave(clusters, cli_bin, tmp_path):
    db = "fleet_ok"
    for c in clusters.values():
        c.create_database(db)
    fleet = fleet_file(tmp_path / "fleet.toml", clusters, db)
    folder = migrations(tmp_path, FILES)
    run = runner(cli_bin, folder)
    assert run("hash").returncode == 0
    r = run("apply", "--fleet", str(fleet))
    assert r.returncode == 0, r
    lines = r.stdout.splitlines()
    # Version by version: the canary, the first wave, the second; then the fingerprints.
    first = [line.split(":")[0] for line in lines if " 1 orders:" in line]
    assert first == ["canary", "eu", "us", "apac"], r.stdout
    assert lines.index(next(x for x in lines if x.startswith("apac: applied 1 "))) < lines.index(
        next(x for x in lines if x.startswith("canary: applied 2 ")))
    assert sum("the same fingerprint on 4 targets" in line for line in lines) == 5, r.stdout
    for c in clusters.values():
        assert versions(c, db) == ["1", "2", "3", "4", "5"]
    prints = set()
    for c in clusters.values():
        with c.connect(db) as conn:
            prints.add(conn.execute("SELECT migrate.fingerprint()").fetchone()[0])
    assert len(prints) == 1

    r = run("status", "--fleet", str(fleet), "--format", "json")
    assert r.returncode == 0, r
    targets = json.loads(r.stdout)["targets"]
    assert [(t["target"], t["version"], t["pending"], t["drift"]) for t in targets] == [
        ("canary", "5", 0, "canary"), ("eu", "5", 0, "none"), ("us", "5", 0, "none"), ("apac", "5", 0, "none")]
    r = run("apply", "--fleet", str(fleet))
    assert r.returncode == 0 and "nothing to apply on any target" in r.stdout, r

    # A version that fails on the canary goes nowhere else.
    (folder / "V6__broken.sql").write_text("ALTER TABLE no_such_table ADD COLUMN x int;\n")
    assert run("hash").returncode == 0
    r = run("apply", "--fleet", str(fleet))
    assert r.returncode == 1 and "no_such_table" in r.stderr, r
    r = run("status", "--fleet", str(fleet), "--check", "--format", "json")
    assert r.returncode == 5, r
    assert [t["pending"] for t in json.loads(r.stdout)["targets"]] == [1, 1, 1, 1]
    for c in clusters.values():
        c.drop_database(db)


def test_a_target_drifted_by_hand_stops_the_fleet_and_is_named(clusters, cli_bin, tmp_path):
    db = "fleet_drift"
    for c in clusters.values():
        c.create_database(db)
    with clusters["us"].connect(db) as c:
        c.execute("CREATE TABLE hotfix (id int)")
    fleet = fleet_file(tmp_path / "fleet.toml", clusters, db)
    folder = migrations(tmp_path, FILES)
    run = runner(cli_bin, folder)
    assert run("hash").returncode == 0
    r = run("apply", "--fleet", str(fleet))
    assert r.returncode == 4, r
    assert 'target "us" has another schema than "canary" after version 1' in r.stderr, r
    assert "public.hotfix (tables): added" in r.stderr and "migrate.drift()" in r.stderr, r
    # Version 1 reached every target; nothing after it reached any.
    for name, c in clusters.items():
        assert versions(c, db) == ["1"], name
    r = run("status", "--fleet", str(fleet), "--format", "json")
    assert r.returncode == 4, r
    assert {t["target"]: t["drift"] for t in json.loads(r.stdout)["targets"]} == {
        "canary": "canary", "eu": "none", "us": "fingerprint differs", "apac": "none"}
    # Without a canary, the first target in name order is the reference.
    plain = fleet_file(tmp_path / "plain.toml", clusters, db, canary=False)
    r = run("status", "--fleet", str(plain), "--format", "json")
    assert [t["target"] for t in json.loads(r.stdout)["targets"]] == sorted(NAMES), r
    for c in clusters.values():
        c.drop_database(db)


@pytest.mark.parametrize("text,words", [
    ('canary = "nowhere"\n[targets.a]\nurl = "x"\n', 'the canary "nowhere" is not one of [targets]'),
    ('[targets.a]\nurl = "x"\nservice = "y"\n', "needs one of url and service"),
    ('waves = [["a"]]\n[targets.a]\nurl = "x"\n[targets.b]\nurl = "y"\n', 'target "b" is in no wave'),
    ("targets = 3\n", "invalid type"),
], ids=["unknown canary", "url and service", "no wave", "not a table"])
def test_a_bad_fleet_file_is_a_usage_error(cli_bin, tmp_path, text, words):
    fleet = tmp_path / "fleet.toml"
    fleet.write_text(text)
    folder = migrations(tmp_path, {"V1__x.sql": "CREATE TABLE x (id int);\n"})
    run = runner(cli_bin, folder)
    assert run("hash").returncode == 0
    for verb in (["apply"], ["status"]):
        r = run(*verb, "--fleet", str(fleet))
        assert r.returncode == 2 and words in r.stderr, r
    r = run("apply", "--fleet", str(tmp_path / "missing.toml"))
    assert r.returncode == 1 and "reading the fleet file" in r.stderr, r
