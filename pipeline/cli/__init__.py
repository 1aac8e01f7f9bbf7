"""The command line: `python -m pipeline COMMAND`, one parser per command group, and the local Airflow launchers."""
