"""Compatibility shim: ``jobs.distributed`` moved into the subpackages of jobs/.

This old path only re-exports its names from their new modules (below), so that
``from jobs.distributed import ...`` keeps working; new code imports the new paths."""

from jobs.contract.failure import CollectiveFailed
from jobs.node.data_parallel import (
    decorrelate_streams,
    install_gradient_averaging,
    join_data_parallel,
    rank_seed,
)
from jobs.node.group import BUCKET_BYTES, Group, ProcessGroup, select_gpu, start
from jobs.node.world import (
    DEFAULT_INIT_TIMEOUT_S,
    DEFAULT_TIMEOUT_S,
    INIT_TIMEOUT_ENV,
    PORT_BASE,
    PORT_SPAN,
    TIMEOUT_ENV,
    World,
    detect,
    expand_hostlist,
    job_port,
    master_address,
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
