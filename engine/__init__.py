"""The Esper engine (imported as `esper_tui.engine`): forge, library, training loop, bus, aggregator.

A library first: `runtime.Engine` can be driven from a test or a script; the dashboard and the headless
runner are two thin clients of it. Nothing here imports textual or rich (tests/test_engine_imports.py).
Everything that crosses a boundary is a msgspec Struct in `contracts`.
"""
