#!/usr/bin/env bash
# Throwaway PostgreSQL clusters with pg_migrate preloaded, for the demo, the end-to-end tests
# and the benchmarks. Each lives in its own directory (data, socket, log) outside /root, runs
# as the postgres user on its own port, and listens on 127.0.0.1 and its own socket only.
#
#   cluster.sh start DIR PORT [-c name=value ...]   initdb if needed, then start (idempotent);
#                                                   INITDB_ARGS (e.g. --data-checksums) for initdb
#   cluster.sh stop DIR                             fast shutdown (idempotent)
#   cluster.sh restart DIR                          e.g. to load a newly installed library
#   cluster.sh status DIR
set -euo pipefail

PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
# A Rust backtrace has no place in a DBA's error messages.
unset RUST_BACKTRACE RUST_LIB_BACKTRACE
as_postgres() { runuser -u postgres -- "$@"; }

cmd=${1:?usage: cluster.sh start|stop|status DIR [PORT]}
dir=${2:?usage: cluster.sh start|stop|status DIR [PORT]}
case "$dir" in /root|/root/*) echo "cluster.sh: $dir is under /root, which postgres cannot read" >&2; exit 2;; esac

running() { [ -f "$dir/data/postmaster.pid" ] && as_postgres "$PG_BIN/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; }

case "$cmd" in
start)
    port=${3:?cluster.sh start DIR PORT}
    shift 3
    if running; then exit 0; fi
    mkdir -p "$dir/sock"
    chown postgres: "$dir" "$dir/sock"
    if [ ! -f "$dir/data/PG_VERSION" ]; then
        as_postgres "$PG_BIN/initdb" -D "$dir/data" -U postgres -A trust --no-sync -E UTF8 \
            --locale=C ${INITDB_ARGS:-} >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; exit 1; }
        cat >>"$dir/data/postgresql.conf" <<CONF

# cluster.sh
shared_preload_libraries = 'pg_migrate'
port = $port
unix_socket_directories = '$dir/sock'
listen_addresses = '127.0.0.1'
max_connections = 200
log_line_prefix = '%m [%p] %q%a %u@%d '
log_min_messages = warning
CONF
        echo "host replication all 127.0.0.1/32 trust" >>"$dir/data/pg_hba.conf"
    fi
    opts=""
    for arg in "$@"; do opts+=" $(printf '%q' "$arg")"; done
    as_postgres "$PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 -o "$opts" start >/dev/null \
        || { tail -n 30 "$dir/server.log" >&2; exit 1; }
    ;;
stop)
    if running; then as_postgres "$PG_BIN/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null; fi
    ;;
restart)
    as_postgres "$PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -m fast -w restart >/dev/null \
        || { tail -n 30 "$dir/server.log" >&2; exit 1; }
    ;;
status)
    if running; then echo "running: $dir"; else echo "stopped: $dir"; exit 3; fi
    ;;
*)
    echo "cluster.sh: unknown command $cmd" >&2; exit 2 ;;
esac
