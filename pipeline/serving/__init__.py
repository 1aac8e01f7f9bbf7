"""Forecasts out: batch scoring to pipeline.predictions, and the REST API."""
