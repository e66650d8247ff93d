"""The detail screens (Sanctum in depth): a seed slot's history, a compile job's attempts, a Tamiyo decision,
any event, and the run's settings. Each reads `Details` from the link when it opens and while it stays open."""
