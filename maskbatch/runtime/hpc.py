"""HPC clusters through dask-jobqueue (the `hpc` extra): Slurm or PBS jobs of maskbatch workers.

    from distributed import Client
    import maskbatch
    from maskbatch.dask import jobqueue_cluster

    with jobqueue_cluster("slurm", cores=32, memory="48GB", walltime="02:00:00", queue="cpu",
                          account="my-project", venv="$HOME/venvs/maskbatch") as cluster, \\
            Client(cluster):
        cluster.scale(jobs=4)                      # 4 node jobs of 32 workers each
        result = maskbatch.predict("/scratch/me/photos", "/scratch/me/out", resume=True)

Each batch job runs one single-threaded worker process per core (the job's own setting,
deploy/README.md section 2) with one library thread each, glibc's malloc defaults (as
deploy/dask.yaml) and its scratch space on the node's local disk. maskbatch.predict inside
`with Client(cluster):` runs on that cluster and waits for its first worker (--min-workers).
"""

from __future__ import annotations

from typing import Any

# What every worker process of a batch job gets, in the job script before `dask worker`:
# one thread per native library (a worker is one single-threaded process per core), and no
# MALLOC_TRIM_THRESHOLD_ from the nanny (17-19 % slower per photo, docs/benchmarks.md).
WORKER_PROLOGUE = (
    "export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1",
    "export DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON__MALLOC_TRIM_THRESHOLD_=None",
)
KINDS = ("slurm", "pbs")


def jobqueue_cluster(kind: str, *, cores: int, memory: str, venv: str | None = None,
                     prologue: tuple[str, ...] | list[str] = (), **options: Any) -> Any:
    """A dask-jobqueue SLURMCluster ("slurm") or PBSCluster ("pbs") whose every job runs `cores`
    single-threaded worker processes sharing `memory` (e.g. "48GB"); `venv`: a virtual
    environment on the shared file system to activate first; `prologue`: more shell lines;
    `options`: the rest of dask-jobqueue's arguments (queue, account, walltime, interface,
    scheduler_options ...). No job is submitted until `cluster.scale(jobs=N)`."""
    from maskbatch.errors import MaskbatchError

    if kind not in KINDS:
        raise MaskbatchError(f"unknown job queue {kind!r}; choose from {', '.join(KINDS)}")
    try:
        from dask_jobqueue import PBSCluster, SLURMCluster
    except ImportError:
        raise MaskbatchError("HPC clusters need dask-jobqueue: pip install 'maskbatch[hpc]'"
                             ) from None
    lines = [*WORKER_PROLOGUE, *([f"source {venv}/bin/activate"] if venv else []), *prologue]
    options.setdefault("local_directory", "${TMPDIR:-/tmp}")  # spill to the node's own disk
    if venv:
        options.setdefault("python", f"{venv}/bin/python")
    cluster_class = SLURMCluster if kind == "slurm" else PBSCluster
    return cluster_class(cores=cores, processes=cores, memory=memory,
                         job_script_prologue=lines, **options)
