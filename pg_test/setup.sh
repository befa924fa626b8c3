#!/usr/bin/env bash
# Installs what building, testing and the demo need, skipping whatever is already there, so a
# second run takes about a second. Runs as root on Debian 12.
set -euo pipefail
cd "$(dirname "$0")/.."

PGRX_VERSION=0.18.0
PG15_CONFIG=/usr/lib/postgresql/15/bin/pg_config
# PostgreSQL 17 and 18: Debian 12 has no binary of them, so they are built from Debian's source
# tarballs (pinned by checksum) into a directory the postgres user can run them from. PG=pg17 or
# PG=pg18 asks for one (make test PG=pg18); nothing else needs them.
SERVERS_DIR=/opt/pg_migrate
declare -A PG_TARBALL=(
    [pg17]="postgresql-17/postgresql-17_17.11.orig.tar.bz2 dd27f2b3c59e73ed14aa3324901242bf69a032a6347805f274e6260322d42979"
    [pg18]="postgresql-18/postgresql-18_18.6.orig.tar.bz2 555610c24d53e4316da5b7d3fc25c279d96856d5e0e23ee308c328c5fa881d9f"
)
PG=${PG:-pg15}
export PATH="$HOME/.cargo/bin:$PATH"

if [ "$(id -u)" != 0 ]; then
    echo "setup: run as root (it installs Debian packages and the extension)" >&2
    exit 1
fi

missing=()
for pkg in postgresql-15 postgresql-server-dev-15 postgresql-contrib libclang-dev clang sudo \
           pkg-config libssl-dev openssl make gcc python3 python3-venv git pgbouncer; do
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

# The contrib modules the tests load, and TLS (the CLI's tests); a build missing one (an
# older setup) is built again.
CONTRIB=(pg_trgm citext postgres_fdw pg_stat_statements pg_walinspect)
built() {
    [ -f "$SERVERS_DIR/$PG/.built" ] || return 1
    "$SERVERS_DIR/$PG/bin/pg_config" --configure | grep -q -- --with-openssl || return 1
    local share
    share=$("$SERVERS_DIR/$PG/bin/pg_config" --sharedir) || return 1
    for m in "${CONTRIB[@]}"; do [ -f "$share/extension/$m.control" ] || return 1; done
}

if [ "$PG" != pg15 ] && ! built; then
    if [ -z "${PG_TARBALL[$PG]:-}" ]; then
        echo "setup: PG=$PG is not one of pg15, pg17, pg18" >&2
        exit 1
    fi
    read -r path sha <<<"${PG_TARBALL[$PG]}"
    prefix=$SERVERS_DIR/$PG
    echo "setup: building PostgreSQL ${PG#pg} from Debian's source into $prefix (4 to 10 minutes, once)"
    deps=(bison flex libreadline-dev zlib1g-dev libssl-dev curl)
    apt-get install -y -q --no-install-recommends "${deps[@]}" >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends "${deps[@]}" >/dev/null; }
    mkdir -p "$HOME/.pgrx/src"
    cd "$HOME/.pgrx/src"
    tarball=${path##*/}
    if ! echo "$sha  $tarball" | sha256sum -c --status 2>/dev/null; then
        if curl -fsS -o "$tarball.part" "http://deb.debian.org/debian/pool/main/p/$path" \
                && echo "$sha  $tarball.part" | sha256sum -c --status; then
            mv "$tarball.part" "$tarball"
        else
            # The pool drops a version once a newer one replaces it: then the suites' current
            # source, which apt checks against their signed index.
            rm -f "$tarball.part"
            echo "setup: $tarball is gone from Debian's pool; taking trixie's or sid's current source"
            src_list=/etc/apt/sources.list.d/pg-migrate-src.sources
            printf '%s\n' "Types: deb-src" "URIs: http://deb.debian.org/debian" "Suites: trixie sid" \
                "Components: main" "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg" >"$src_list"
            apt-get update -q >/dev/null
            apt-get source --download-only "postgresql-${PG#pg}" >/dev/null || true
            rm -f "$src_list"
            apt-get update -q >/dev/null
            tarball=$( (ls "postgresql-${PG#pg}"_*.orig.tar.bz2 2>/dev/null || true) | sort -V | tail -1)
            [ -n "$tarball" ] || { echo "setup: no source of PostgreSQL ${PG#pg} to build" >&2; exit 1; }
        fi
    fi
    version=${tarball#*_}
    version=${version%.orig.tar.bz2}
    build=$HOME/.pgrx/src/postgresql-$version
    rm -rf "$build" && tar xjf "$tarball"
    # Under `make test` this runs inside another make: PostgreSQL builds its generated headers
    # (utils/errcodes.h) only from a top-level make (MAKELEVEL 0), so the outer make's
    # variables are dropped, or src/common may be compiled before its headers exist.
    (unset MAKELEVEL MAKEFLAGS MFLAGS && cd "$build" && ./configure --prefix="$prefix" --without-icu --with-openssl >/dev/null \
        && make -j"$(nproc)" >/dev/null && make install >/dev/null \
        && for m in "${CONTRIB[@]}"; do make -C "contrib/$m" install >/dev/null; done)
    rm -rf "$build"
    echo "$version" >"$prefix/.built"
    cd - >/dev/null
fi

# pgrx knows every version built here; init rewrites its list, so it is given all of them.
init=(--pg15 "$PG15_CONFIG")
for v in pg17 pg18; do
    [ -f "$SERVERS_DIR/$v/.built" ] && init+=("--$v" "$SERVERS_DIR/$v/bin/pg_config")
done
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
