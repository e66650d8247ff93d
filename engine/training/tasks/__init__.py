"""The built-in tasks, by name (`--task mnist1d`, `--task digits`): written with the same Task API a user's file is."""
