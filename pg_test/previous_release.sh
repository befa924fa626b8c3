#!/usr/bin/env bash
# Builds the previous release of pg_migrate, which pg_test/test_upgrade.py installs, fills and
# upgrades, once, into a cache outside the repository (~/.pgrx). make e2e runs it; nothing else
# needs it. It needs this repository's history (the release's commit).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
PG15_CONFIG=/usr/lib/postgresql/15/bin/pg_config

# The previous release, which the upgrade test installs, fills and upgrades: built once from
# its commit (the one that landed as 0.1.0) into a cache outside the repository. Its own build
# directory: in this one, its library would take the place of the current one.
OLD_VERSION=0.1.0
OLD_COMMIT=beed796d2a8efae253f1f97d9165b236c302028c
old_pkg="$HOME/.pgrx/pg_migrate-$OLD_VERSION/pg15"
if [ ! -f "$old_pkg/.built-from-$OLD_COMMIT" ]; then
    echo "previous_release: building pg_migrate $OLD_VERSION for the upgrade test (a few minutes, once)"
    git() { command git -c safe.directory="$PWD" "$@"; }
    if ! git cat-file -e "$OLD_COMMIT^{commit}" 2>/dev/null \
            && [ "$(git rev-parse --is-shallow-repository)" = true ]; then
        git fetch -q --unshallow || true
    fi
    if ! git cat-file -e "$OLD_COMMIT^{commit}"; then
        echo "previous_release: commit $OLD_COMMIT (pg_migrate $OLD_VERSION) is missing: clone the whole history" >&2
        exit 1
    fi
    old_src="$HOME/.pgrx/src/pg_migrate-$OLD_VERSION"
    rm -rf "$old_src" "$old_pkg"
    mkdir -p "$old_src"
    git archive "$OLD_COMMIT" | tar -x -C "$old_src"
    (cd "$old_src" && cargo pgrx package --debug --pg-config "$PG15_CONFIG" --out-dir "$old_pkg" >/dev/null)
    rm -rf "$old_src"
    touch "$old_pkg/.built-from-$OLD_COMMIT"
fi

