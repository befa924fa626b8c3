#!/bin/sh
# The pull-request step of the README's CI recipe: a scratch database with production's
# schema and migration history (db/schema.sql and db/history.sql, dumped from production
# with pg_dump), then the folder's new files linted and dry-run against it, as GitHub
# annotations. Connection from PG* variables; pg-migrate, psql, createdb and dropdb on PATH.
# pg_test/test_cli.py runs it.
set -eu
db=${SCRATCH_DB:-pg_migrate_scratch}
dir=${PG_MIGRATE_DIR:-migrations}
dumps=${SCHEMA_DIR:-db}
dropdb --if-exists "$db"
createdb "$db"
# The dumps are the pull request's files: run this for pull requests from the repository's
# own branches (pull_request), never pull_request_target.
psql -X -v ON_ERROR_STOP=1 -q -d "$db" -f "$dumps/schema.sql" >/dev/null
psql -X -v ON_ERROR_STOP=1 -q -d "$db" -f "$dumps/history.sql" >/dev/null
# Both run, so that a pull request sees every finding at once; the exit code is the last
# failure's.
status=0
# A migration that ran in production and was edited since shows as changed (exit 4).
pg-migrate --dir "$dir" --dbname "$db" --format github status || status=$?
pg-migrate --dir "$dir" --dbname "$db" --format github lint || status=$?
pg-migrate --dir "$dir" --dbname "$db" --format github plan --scratch || status=$?
dropdb "$db"
exit "$status"
