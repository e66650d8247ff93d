# Sourced by `make test`: make sure promtool (Debian's `prometheus` package) is there for the Nissa tests,
# which run `promtool check metrics` on a live scrape and `promtool test rules` on deploy/prometheus.
# Installs the package when missing and we are root (it brings a Prometheus server too: never started here).
if ! command -v promtool >/dev/null 2>&1; then
    if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
        echo "ensure-promtool: installing Debian's prometheus package (for promtool)" >&2
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus) >&2
    else
        echo "ensure-promtool: promtool is not installed (apt-get install prometheus)" >&2
        return 1 2>/dev/null || exit 1
    fi
fi
echo "ensure-promtool: $(promtool --version 2>&1 | head -n 1)" >&2
