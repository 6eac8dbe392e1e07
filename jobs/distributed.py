"""Moved to jobs.node.distributed (and jobs.contract.failure).

This old path only re-exports its names, so that ``from jobs.distributed import ...``
keeps working; new code imports the new paths."""

from jobs.contract.failure import CollectiveFailed
from jobs.node.distributed import (
    BUCKET_BYTES,
    DEFAULT_INIT_TIMEOUT_S,
    DEFAULT_TIMEOUT_S,
    INIT_TIMEOUT_ENV,
    PORT_BASE,
    PORT_SPAN,
    TIMEOUT_ENV,
    Group,
    ProcessGroup,
    World,
    decorrelate_streams,
    detect,
    expand_hostlist,
    install_gradient_averaging,
    job_port,
    join_data_parallel,
    master_address,
    rank_seed,
    select_gpu,
    start,
)

__all__ = [
    "BUCKET_BYTES",
    "DEFAULT_INIT_TIMEOUT_S",
    "DEFAULT_TIMEOUT_S",
    "INIT_TIMEOUT_ENV",
    "PORT_BASE",
    "PORT_SPAN",
    "TIMEOUT_ENV",
    "CollectiveFailed",
    "Group",
    "ProcessGroup",
    "World",
    "decorrelate_streams",
    "detect",
    "expand_hostlist",
    "install_gradient_averaging",
    "job_port",
    "join_data_parallel",
    "master_address",
    "rank_seed",
    "select_gpu",
    "start",
]
