# Sourced by `make test`: make sure Debian's headless-capable Chromium and its WebDriver are there for the
# browser test (tests/test_browser.py drives `esper-tui serve` in it through selenium). Installs the two
# packages when missing and we are root; selenium is told where they are, so it never downloads a browser.
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
    if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
        echo "ensure-chromium: installing Debian's chromium and chromium-driver" >&2
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            chromium chromium-driver) >&2
    else
        echo "ensure-chromium: chromium or chromedriver is not installed (apt-get install chromium chromium-driver)" >&2
        return 1 2>/dev/null || exit 1
    fi
fi
echo "ensure-chromium: $(chromium --version 2>/dev/null | head -n 1)" >&2
