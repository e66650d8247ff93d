#!/usr/bin/env bash
# Build .lint/esper_tui: a symlink view of the package as it installs (esper_tui/ and its subpackages, plus
# engine/, widgets/ and themes/ as its subpackages), so mypy and import-linter see the names the code imports.
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf .lint
mkdir -p .lint/esper_tui
for f in esper_tui/*.py; do ln -s "../../$f" .lint/esper_tui/; done
for d in esper_tui/*/; do [ -f "$d/__init__.py" ] && ln -s "../../${d%/}" .lint/esper_tui/; done
for d in engine widgets themes; do ln -s "../../$d" ".lint/esper_tui/$d"; done
