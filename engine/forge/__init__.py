"""Tezzeret: the forge that compiles the catalog in sandboxed workers, with breakers and conservative mode."""
