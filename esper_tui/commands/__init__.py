"""The command line: `esper-tui` and its sub-commands (cli.py parses and dispatches; one module per command)."""
