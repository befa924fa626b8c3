#!/usr/bin/env bash
# Installs what building, testing and the demo need, skipping whatever is already there, so a
# second run takes about a second. Runs as root on Debian 12.
set -euo pipefail
cd "$(dirname "$0")/.."

PGRX_VERSION=0.18.0
PG15_CONFIG=/usr/lib/postgresql/15/bin/pg_config
# PostgreSQL 18: built from Debian's source package (Debian 12 has no binary of it) into a
# directory the postgres user can run it from; PG=pg18 asks for it (make test PG=pg18).
PG18_DIR=/opt/pg_migrate/pg18
PG=${PG:-pg15}
export PATH="$HOME/.cargo/bin:$PATH"

if [ "$(id -u)" != 0 ]; then
    echo "setup: run as root (it installs Debian packages and the extension)" >&2
    exit 1
fi

missing=()
for pkg in postgresql-15 postgresql-server-dev-15 postgresql-contrib libclang-dev clang sudo \
           pkg-config make gcc python3 python3-venv git; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

if ! command -v cargo >/dev/null; then
    echo "setup: cargo is missing; install Rust 1.95 with rustup first" >&2
    exit 1
fi

if ! cargo pgrx --version 2>/dev/null | grep -q " $PGRX_VERSION\$"; then
    echo "setup: installing cargo-pgrx $PGRX_VERSION (about 12 minutes on 2 cores)"
    cargo install cargo-pgrx --version "$PGRX_VERSION" --locked
fi

if [ "$PG" = pg18 ] && [ ! -f "$PG18_DIR/.built" ]; then
    echo "setup: building PostgreSQL 18 from Debian's source into $PG18_DIR (about 10 minutes, once)"
    apt-get install -y -q --no-install-recommends bison flex libreadline-dev zlib1g-dev >/dev/null
    mkdir -p "$HOME/.pgrx/src"
    cd "$HOME/.pgrx/src"
    if ! ls postgresql-18_*.orig.tar.bz2 >/dev/null 2>&1; then
        # sid's source packages for this one download only: bookworm's apt keeps its own lists.
        src_list=/etc/apt/sources.list.d/pg-migrate-src.sources
        printf '%s\n' "Types: deb-src" "URIs: http://deb.debian.org/debian" "Suites: sid" \
            "Components: main" "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg" >"$src_list"
        apt-get update -q >/dev/null
        apt-get source --download-only postgresql-18 >/dev/null
        rm -f "$src_list"
        apt-get update -q >/dev/null
    fi
    tarball=$(ls postgresql-18_*.orig.tar.bz2 | sort -V | tail -1)
    version=${tarball#postgresql-18_}
    build=$HOME/.pgrx/src/postgresql-${version%.orig.tar.bz2}
    rm -rf "$build" && tar xjf "$tarball"
    (cd "$build" && ./configure --prefix="$PG18_DIR" --without-icu >/dev/null \
        && make -j"$(nproc)" >/dev/null && make install >/dev/null \
        && for m in pg_trgm citext postgres_fdw; do make -C "contrib/$m" install >/dev/null; done)
    rm -rf "$build"
    touch "$PG18_DIR/.built"
    cd - >/dev/null
fi

# pgrx knows every version built here; init rewrites its list, so it is given all of them.
init=(--pg15 "$PG15_CONFIG")
[ -x "$PG18_DIR/bin/pg_config" ] && init+=(--pg18 "$PG18_DIR/bin/pg_config")
want_config=$(printf '%s\n' "${init[@]}" | paste -sd' ')
if [ "$(cat "$HOME/.pgrx/.pg_migrate-init" 2>/dev/null)" != "$want_config" ] \
        || ! grep -qs "^pg15 = \"$PG15_CONFIG\"" "$HOME/.pgrx/config.toml"; then
    cargo pgrx init "${init[@]}"
    echo "$want_config" >"$HOME/.pgrx/.pg_migrate-init"
fi

venv=pg_test/.venv
stamp="$venv/.requirements.sha256"
want=$(sha256sum pg_test/requirements.txt | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "setup: creating the Python environment for the end-to-end tests"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check -r pg_test/requirements.txt
    echo "$want" >"$stamp"
fi
