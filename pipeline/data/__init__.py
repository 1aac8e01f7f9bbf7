"""Rows in: ingest, casting, row checks, quality classification, Great Expectations, demo data and arrivals."""
