"""The jobs' Dask code (the public bag API is maskbatch.dask): the client (local cluster or
scheduler), the worker plugin, and running partitions as dask bag partitions in a bounded window."""
