# Sourced by `make test`: make sure a PostgreSQL server answers for the shared-catalog tests.
# Uses ESPER_TEST_PG_URL if set; else the server on 127.0.0.1:5432; else starts a private cluster on port
# 5440 with its data in ${TMPDIR:-/tmp}/esper-test-pg (installing Debian's postgresql package first if it is
# missing and we are root). ESPER_TEST_PG_FORCE_PRIVATE=1 skips 5432 (to try the private path).
# Exports ESPER_TEST_PG_URL for the catalog tests (which fail, never skip, when no server answers).
# Stop the private cluster with: pg_ctl -D "${TMPDIR:-/tmp}/esper-test-pg" stop (as the postgres user if root).

_esper_pg_ready() {  # host port
    if command -v pg_isready >/dev/null 2>&1; then
        pg_isready -q -h "$1" -p "$2" -t 2
    else
        python3 - "$1" "$2" <<'PY'
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1).close()
    ok = True
except OSError:
    ok = False
sys.exit(0 if ok else 1)
PY
    fi
}

_esper_pg_bin() {  # the newest installed server's bin directory, or nothing
    ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1
}

_esper_pg_as_owner() {  # command...: PostgreSQL refuses to run as root, so root runs it as `postgres`
    if [ "$(id -u)" = "0" ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

_esper_pg_private() {  # start (initialising if needed) the private cluster on 127.0.0.1:5440
    _esper_pg_dir="${TMPDIR:-/tmp}/esper-test-pg"
    if [ -z "$(_esper_pg_bin)" ]; then
        if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
            echo "ensure-postgres: installing Debian's postgresql package" >&2
            (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql) >&2 || return 1
        else
            echo "ensure-postgres: no PostgreSQL answers and none is installed (apt-get install postgresql)" >&2
            return 1
        fi
    fi
    _esper_pg_bindir="$(_esper_pg_bin)"
    if [ ! -s "$_esper_pg_dir/PG_VERSION" ]; then
        echo "ensure-postgres: initialising a private cluster in $_esper_pg_dir" >&2
        mkdir -p "$_esper_pg_dir" || return 1
        [ "$(id -u)" = "0" ] && chown postgres: "$_esper_pg_dir"
        _esper_pg_as_owner "$_esper_pg_bindir/initdb" -D "$_esper_pg_dir" -A trust -U postgres >/dev/null || return 1
    fi
    echo "ensure-postgres: starting the private cluster on 127.0.0.1:5440" >&2
    _esper_pg_as_owner "$_esper_pg_bindir/pg_ctl" -D "$_esper_pg_dir" -l "$_esper_pg_dir/server.log" -w -t 30 \
        -o "-p 5440 -k /tmp -c listen_addresses=127.0.0.1 -c fsync=off" start >/dev/null || {
        echo "ensure-postgres: the private cluster did not start; see $_esper_pg_dir/server.log" >&2
        return 1
    }
}

if [ -z "${ESPER_TEST_PG_URL:-}" ]; then
    if [ "${ESPER_TEST_PG_FORCE_PRIVATE:-}" != "1" ] && _esper_pg_ready 127.0.0.1 5432; then
        export ESPER_TEST_PG_URL="postgresql://postgres@127.0.0.1:5432/postgres"
    elif _esper_pg_ready 127.0.0.1 5440 || _esper_pg_private; then
        export ESPER_TEST_PG_URL="postgresql://postgres@127.0.0.1:5440/postgres"
    else
        return 1 2>/dev/null || exit 1
    fi
fi
echo "ensure-postgres: tests use $ESPER_TEST_PG_URL" >&2
