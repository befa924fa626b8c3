#!/usr/bin/env bash
# `make demo`: a throwaway cluster with pg_migrate preloaded, a small shop database, and a
# walk through pg_migrate in psql. Leaves the cluster running for you to explore.
set -euo pipefail
cd "$(dirname "$0")/.."

DIR=${DEMO_DIR:-/tmp/pg_migrate_demo}
PORT=${DEMO_PORT:-55432}
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}

# Throwaway: a fresh cluster every time, so it also loads the library just installed.
pg_test/cluster.sh stop "$DIR"
rm -rf "$DIR"
pg_test/cluster.sh start "$DIR" "$PORT"

export PGHOST="$DIR/sock" PGPORT="$PORT" PGUSER=postgres
"$PG_BIN/psql" -X -q -d postgres -c "CREATE DATABASE demo"
"$PG_BIN/psql" -X -q -d demo -v ON_ERROR_STOP=1 -f pg_test/demo.sql

cat <<TXT

==> The demo cluster is running (data in $DIR, port $PORT, socket in $DIR/sock).
    Explore it with psql:
        psql -h $DIR/sock -p $PORT -U postgres demo
    and try, for instance:
        SELECT * FROM migrate.status;
        SELECT * FROM migrate.ddl_log ORDER BY id;
        SELECT * FROM migrate.apply('5', \$\$ CREATE TABLE wishlists (customer_id bigint) \$\$);
    Stop it with:
        make stop
TXT
