"""Continuous training of a type-2 diabetes progression model: plain, Airflow-free stages."""
