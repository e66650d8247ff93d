"""Urza: the library of signed, versioned compiled kernels (store), their metadata (meta) and signing."""
