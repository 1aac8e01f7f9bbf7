"""The book of record: snapshots, versions, evaluations and promotions, and the lifecycle of the runs that make them."""
