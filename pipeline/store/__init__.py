"""The I/O layer: the PostgreSQL engine and schema, and the content-addressed artifact store."""
