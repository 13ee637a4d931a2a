#!/usr/bin/env bash
# A throwaway PostgreSQL server for the integration tests: Debian's binaries, loopback only, a
# random password, its data and socket in DIR.
#   .ci/postgres.sh start DIR [PORT]   create the cluster in DIR (a new, empty folder), start it
#                                      on 127.0.0.1:PORT (default 54329), create the database
#                                      mmsearch_test; print its URL on stdout
#   .ci/postgres.sh stop DIR           stop the server and delete DIR
set -euo pipefail

# The server refuses to run as root: as root, its commands run as the `postgres` user.
as_owner() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

pg_bin() {
  local bin
  bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
  if [ -z "$bin" ]; then
    echo "no PostgreSQL under /usr/lib/postgresql: apt-get install postgresql" >&2
    exit 1
  fi
  echo "$bin"
}

start() {
  local dir=$1 port=${2:-54329} bin password
  bin=$(pg_bin)
  mkdir -p "$dir"
  password=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
  (umask 077 && printf '%s\n' "$password" >"$dir/pwfile")
  if [ "$(id -u)" = 0 ]; then chown -R postgres: "$dir"; fi
  as_owner "$bin/initdb" -D "$dir/data" -U postgres --pwfile="$dir/pwfile" \
    --auth=scram-sha-256 --encoding=UTF8 --locale=C >"$dir/initdb.log" 2>&1 \
    || { cat "$dir/initdb.log" >&2; exit 1; }
  rm -f "$dir/pwfile"
  as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
    -o "-h 127.0.0.1 -p $port -k $dir" start >/dev/null \
    || { cat "$dir/server.log" >&2; exit 1; }
  PGPASSWORD=$password "$bin/createdb" -h 127.0.0.1 -p "$port" -U postgres mmsearch_test
  echo "postgresql://postgres:$password@127.0.0.1:$port/mmsearch_test"
}

stop() {
  local dir=$1
  if [ -f "$dir/data/postmaster.pid" ]; then
    as_owner "$(pg_bin)/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null
  fi
  rm -rf "$dir"
}

case "${1:-}" in
  start) start "${2:?start needs a folder}" "${3:-}" ;;
  stop) stop "${2:?stop needs a folder}" ;;
  *) echo "usage: $0 start DIR [PORT] | stop DIR" >&2; exit 2 ;;
esac
