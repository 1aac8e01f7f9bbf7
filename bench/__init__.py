"""Speed and memory of a retrain at real scale: `make bench` (python -m bench --help).

Each stage of the `retrain` DAG runs on generated patient tables of 10^4..10^6 rows (10^7 with
--with-10m), in a fresh process as Airflow runs a task, beside a hand-wired peer (bench/peer.py: read_sql,
a GX checkpoint, GridSearchCV, joblib.dump) and beside its floor: COPY into nothing for reading rows, GX
listing unexpected rows on the same chunks for validation, the same search by bare scikit-learn for training.
"""
