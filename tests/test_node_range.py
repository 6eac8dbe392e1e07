"""`plan --nodes N` beyond the limit says which limit: the partition's MaxNodes, its size,
plan.max_nodes, cluster.nodes where no Slurm was read, or a command without a parameter
count."""

from __future__ import annotations

from pathlib import Path

import pytest

from planner.errors import PartitionLimitError
from planner.model.node_range import NodeCap, node_cap, tightest
from tests.builders import partition, plan_for, record_for, reference_files, spec_with
from tests.in_process import invoke
from tests.processes import no_slurm_env


def refusal(nodes: int, **kwargs: object) -> str:
    with pytest.raises(PartitionLimitError) as info:
        plan_for(nodes=nodes, **kwargs)  # type: ignore[arg-type]
    assert info.value.field == "--nodes"
    return str(info.value)


def test_each_limit_names_itself() -> None:
    spec = spec_with(plan={})
    text = refusal(5, spec=spec, partition=partition(max_nodes=4))
    assert text.endswith("got 5; must be between 1 and 4: partition gpu's MaxNodes is 4")
    text = refusal(17, spec=spec, partition=partition())
    assert text.endswith("must be between 1 and 16: partition gpu has 16 node(s)")
    text = refusal(3, spec=spec_with(plan__max_nodes=2), partition=partition(max_nodes=4))
    assert text.endswith("must be between 1 and 2: plan.max_nodes is 2")
    text = refusal(2, spec=spec)
    assert text.endswith(
        "must be between 1 and 1: no partition limits were read (no Slurm here): without a "
        "partition the plan considers up to cluster.nodes (1); set cluster.nodes or "
        "plan.max_nodes"
    )


def test_a_command_without_a_parameter_count_keeps_to_cluster_nodes() -> None:
    spec = spec_with(plan__max_nodes=8)
    text = refusal(2, spec=spec, record=record_for(spec, params=0))
    assert "must be between 1 and 1: the calibrated command reported no parameter count" in text


def test_limits_at_the_same_count_are_all_named() -> None:
    cap = node_cap(spec_with(plan__max_nodes=4), partition(max_nodes=4), 10**9)
    assert cap == NodeCap(4, "partition gpu's MaxNodes is 4; plan.max_nodes is 4")
    assert tightest([NodeCap(0, "none left"), NodeCap(3, "three")]) == NodeCap(1, "none left")


def test_cli_without_slurm_says_why(tmp_path: Path) -> None:
    spec, cal = reference_files(tmp_path, plan__max_nodes=None)
    proc = invoke(
        ["plan", str(spec), "--calibration", str(cal), "--nodes", "2"],
        cwd=tmp_path,
        env=no_slurm_env(tmp_path),
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    message = " ".join(proc.stderr.split())
    assert (
        "--nodes: got 2; must be between 1 and 1: no partition limits were read (no Slurm "
        "here): without a partition the plan considers up to cluster.nodes (1); set "
        "cluster.nodes or plan.max_nodes"
    ) in message
