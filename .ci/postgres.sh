# Sourced by .ci/run: a throwaway PostgreSQL server for the distributed-search test.
#
# Starts Debian's PostgreSQL (package `postgresql`, installed here when missing) as a fresh
# cluster in a temporary folder, owned by a non-root user (initdb refuses root), listening on
# 127.0.0.1 at a free port with trust authentication; creates a database and exports
#   NAS_PROXY_TEST_POSTGRES_URL=postgresql://nasproxy@127.0.0.1:PORT/nasproxy_test
# The server is stopped and its folder removed when the sourcing shell exits. It never fails the
# caller: when PostgreSQL cannot be installed or started, it prints why and leaves the URL unset,
# and the test that needs it skips, saying so.

_nas_proxy_pg_bindir() {
  local d
  d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  if [ -n "$d" ] && [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ]; then
    echo "$d"
  fi
}

_nas_proxy_pg_as() {  # run a command as the cluster's owner, from a folder it can read
  if [ "$(id -u)" = 0 ]; then
    (cd / && runuser -u "$_NAS_PROXY_PG_USER" -- "$@")
  else
    (cd / && "$@")
  fi
}

_nas_proxy_pg_start() {
  local bindir port
  bindir=$(_nas_proxy_pg_bindir)
  if [ -z "$bindir" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "postgres: installing Debian's postgresql package" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null 2>&1 \
      || { apt-get update -qq >/dev/null 2>&1 \
           && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null 2>&1; }
    bindir=$(_nas_proxy_pg_bindir)
  fi
  if [ -z "$bindir" ]; then
    echo "postgres: no PostgreSQL server (apt package postgresql could not be installed)" >&2
    return 1
  fi
  if [ "$(id -u)" = 0 ]; then
    _NAS_PROXY_PG_USER=postgres
    id postgres >/dev/null 2>&1 || _NAS_PROXY_PG_USER=nobody
  else
    _NAS_PROXY_PG_USER=$(id -un)
  fi
  _NAS_PROXY_PG_DIR=$(mktemp -d "${TMPDIR:-/tmp}/nas-proxy-pg.XXXXXX") || return 1
  chmod 755 "$_NAS_PROXY_PG_DIR"
  [ "$(id -u)" = 0 ] && chown "$_NAS_PROXY_PG_USER" "$_NAS_PROXY_PG_DIR"
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])') \
    || return 1
  _nas_proxy_pg_as "$bindir/initdb" -D "$_NAS_PROXY_PG_DIR/data" -U nasproxy --auth=trust \
      -E UTF8 >"$_NAS_PROXY_PG_DIR/initdb.log" 2>&1 \
    || { echo "postgres: initdb failed: $(tail -n 1 "$_NAS_PROXY_PG_DIR/initdb.log")" >&2; return 1; }
  _nas_proxy_pg_as "$bindir/pg_ctl" -D "$_NAS_PROXY_PG_DIR/data" -l "$_NAS_PROXY_PG_DIR/server.log" \
      -o "-c listen_addresses=127.0.0.1 -p $port -k $_NAS_PROXY_PG_DIR" -w -t 60 start >/dev/null \
    || { echo "postgres: server did not start: $(tail -n 1 "$_NAS_PROXY_PG_DIR/server.log")" >&2
         return 1; }
  _NAS_PROXY_PG_CTL="$bindir/pg_ctl"
  _nas_proxy_pg_as "$bindir/createdb" -h 127.0.0.1 -p "$port" -U nasproxy nasproxy_test \
    || { echo "postgres: createdb failed" >&2; return 1; }
  export NAS_PROXY_TEST_POSTGRES_URL="postgresql://nasproxy@127.0.0.1:$port/nasproxy_test"
  echo "postgres: $("$bindir/postgres" --version) on 127.0.0.1:$port" >&2
}

nas_proxy_pg_stop() {
  if [ -n "${_NAS_PROXY_PG_CTL:-}" ] && [ -n "${_NAS_PROXY_PG_DIR:-}" ]; then
    _nas_proxy_pg_as "$_NAS_PROXY_PG_CTL" -D "$_NAS_PROXY_PG_DIR/data" -m fast -w stop \
      >/dev/null 2>&1 || true
  fi
  [ -n "${_NAS_PROXY_PG_DIR:-}" ] && rm -rf "$_NAS_PROXY_PG_DIR"
  unset _NAS_PROXY_PG_CTL _NAS_PROXY_PG_DIR NAS_PROXY_TEST_POSTGRES_URL
}

# Keep whatever EXIT trap the caller already set, and stop the server after it.
_nas_proxy_pg_prev_trap=$(trap -p EXIT | sed -e "s/^trap -- '//" -e "s/' EXIT\$//")
trap "${_nas_proxy_pg_prev_trap:+$_nas_proxy_pg_prev_trap; }nas_proxy_pg_stop" EXIT
if ! _nas_proxy_pg_start; then
  echo "postgres: the PostgreSQL two-worker search test will be skipped" >&2
  nas_proxy_pg_stop
fi
true
