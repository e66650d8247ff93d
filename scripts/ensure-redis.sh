# Sourced by `make test`: make sure a Redis server answers for the integration tests.
# Uses ESPER_TEST_REDIS_URL if set; else 127.0.0.1:6379; else starts a private redis-server on
# port 6390 (installing Debian's redis-server package first if it is missing and we are root).
# Exports ESPER_TEST_REDIS_URL for the Redis tests (which fail, never skip, when no server answers).

_esper_ping() {  # host port
    if command -v redis-cli >/dev/null 2>&1; then
        redis-cli -h "$1" -p "$2" ping 2>/dev/null | grep -q PONG
    else
        python3 - "$1" "$2" <<'PY'
import socket, sys
try:
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1)
    s.sendall(b"PING\r\n"); ok = s.recv(16).startswith(b"+PONG")
except OSError:
    ok = False
sys.exit(0 if ok else 1)
PY
    fi
}

if [ -z "${ESPER_TEST_REDIS_URL:-}" ]; then
    if _esper_ping 127.0.0.1 6379; then
        export ESPER_TEST_REDIS_URL="redis://127.0.0.1:6379/15"
    else
        if ! command -v redis-server >/dev/null 2>&1; then
            if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
                echo "ensure-redis: installing Debian's redis-server package" >&2
                (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server) >&2
            else
                echo "ensure-redis: no Redis answers and redis-server is not installed (apt-get install redis-server)" >&2
                return 1 2>/dev/null || exit 1
            fi
        fi
        if ! _esper_ping 127.0.0.1 6390; then
            echo "ensure-redis: starting a private redis-server on 127.0.0.1:6390" >&2
            redis-server --port 6390 --bind 127.0.0.1 --save "" --appendonly no --daemonize yes \
                --logfile "${TMPDIR:-/tmp}/esper-test-redis.log" >&2
            for _ in 1 2 3 4 5 6 7 8 9 10; do _esper_ping 127.0.0.1 6390 && break; sleep 0.3; done
        fi
        export ESPER_TEST_REDIS_URL="redis://127.0.0.1:6390/15"
    fi
fi
echo "ensure-redis: tests use $ESPER_TEST_REDIS_URL" >&2
