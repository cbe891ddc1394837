"""The only Dask code: the client (local cluster or scheduler), the worker plugin, and running
partitions in a bounded window of tasks."""
