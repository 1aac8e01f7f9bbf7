"""What Airflow shows: the Models view's pages and each run's note."""
