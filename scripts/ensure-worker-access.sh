# Sourced by `make test` when run as root: let the unprivileged compile-worker account run this venv's Python.
#
# A root engine runs its compile workers as `esper-worker` (engine/forge/sandbox.py), which must be able to
# execute the interpreter. A Python under a 0700 home (pyenv in /root) is out of its reach, and the engine
# then falls back to running workers as root with a warning. For the tests to exercise the real privilege
# drop, grant that one account traverse-only access (an ACL `u:esper-worker:x`) to each directory on the
# way to the interpreter and its standard library that others cannot traverse. Nothing else changes.

_esper_worker_access() {
    [ "$(id -u)" = "0" ] || return 0
    id esper-worker >/dev/null 2>&1 || useradd --system --user-group --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin esper-worker >/dev/null 2>&1 || return 0
    local dir
    # Every directory from / down to the interpreter, its standard library and the project: top first, so a
    # directory counts as blocked only when its parents already let the account through.
    "${VENV:-.venv}/bin/python" -c 'import os, sys, sysconfig
seen = set()
for target in (os.path.dirname(os.path.realpath(sys.executable)), sysconfig.get_path("stdlib"), os.getcwd()):
    parts = os.path.realpath(target).split(os.sep)
    for i in range(2, len(parts) + 1):
        path = os.sep.join(parts[:i])
        if path not in seen:
            seen.add(path)
            print(path)' | while read -r dir; do
        if ! runuser -u esper-worker -- test -x "$dir" 2>/dev/null; then
            if ! command -v setfacl >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
                echo "ensure-worker-access: installing Debian's acl package" >&2
                (apt-get install -y -qq acl || (apt-get update -qq && apt-get install -y -qq acl)) >/dev/null 2>&1
            fi
            echo "ensure-worker-access: letting esper-worker traverse $dir (setfacl u:esper-worker:x)" >&2
            setfacl -m u:esper-worker:x "$dir" || true
        fi
    done
}
_esper_worker_access
