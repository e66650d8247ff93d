"""The forge's write-ahead log: record format, the writer, and recovery (the read side)."""
