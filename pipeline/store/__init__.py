"""The I/O layer: the PostgreSQL engine and schema, the content-addressed artifact store, and the keys that encrypt it."""
