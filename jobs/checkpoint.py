"""Compatibility shim: ``jobs.checkpoint`` moved into the subpackages of jobs/.

This old path only re-exports its names from their new modules (below), so that
``from jobs.checkpoint import ...`` keeps working; new code imports the new paths."""

from jobs.training.checkpoint import (
    CheckpointTiming,
    apply_state,
    checkpoint_path,
    global_rng_state,
    list_checkpoints,
    load_into,
    probe,
    prune,
    rank_rng_state,
    read_state,
    remove_stale_temporaries,
    save_atomic,
    saved_world_size,
    set_global_rng_state,
    set_rank_rng_state,
    weights_sum,
    workload_state,
)

__all__ = [
    "CheckpointTiming",
    "apply_state",
    "checkpoint_path",
    "global_rng_state",
    "list_checkpoints",
    "load_into",
    "probe",
    "prune",
    "rank_rng_state",
    "read_state",
    "remove_stale_temporaries",
    "save_atomic",
    "saved_world_size",
    "set_global_rng_state",
    "set_rank_rng_state",
    "weights_sum",
    "workload_state",
]
