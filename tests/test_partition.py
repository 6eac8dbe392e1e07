"""Partition limits from scontrol/sinfo output: durations, GRES, the default partition."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from planner.errors import CommandError, SlurmUnavailableError, SpecError
from planner.shell import CommandResult
from planner.slurm.partition import (
    PartitionLimits,
    gres_gpu_count,
    parse_scontrol_partitions,
    parse_sinfo_nodes,
    parse_slurm_duration,
    read_partition,
)
from tests.paths import FIXTURES
from tests.slurm_cluster import SlurmCluster


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


class FakeSlurm:
    """Answers scontrol and sinfo from the fixtures, failing the way run_command does."""

    def __init__(self, scontrol_all: str, sinfo: dict[str, str]) -> None:
        self.partitions = {p["PartitionName"]: p for p in parse_scontrol_partitions(scontrol_all)}
        self.lines = {
            line.split()[0].split("=")[1]: line for line in scontrol_all.splitlines() if line
        }
        self.sinfo = sinfo
        self.calls: list[list[str]] = []

    def __call__(self, argv: Sequence[str]) -> CommandResult:
        argv = list(argv)
        self.calls.append(argv)
        if argv[:4] == ["scontrol", "-o", "show", "partition"]:
            if len(argv) == 4:
                return self._ok(argv, "\n".join(self.lines.values()) + "\n")
            if argv[4] in self.lines:
                return self._ok(argv, self.lines[argv[4]] + "\n")
            raise CommandError(argv, 1, "", f"Partition {argv[4]} not found\n")
        if argv[0] == "sinfo":
            return self._ok(argv, self.sinfo.get(argv[argv.index("-p") + 1], ""))
        raise AssertionError(f"unexpected command {argv}")

    @staticmethod
    def _ok(argv: list[str], stdout: str) -> CommandResult:
        return CommandResult(tuple(argv), 0, stdout, "")


def cluster() -> FakeSlurm:
    sinfo = {"batch": fixture("sinfo_batch.txt"), "long": fixture("sinfo_long.txt")}
    return FakeSlurm(fixture("scontrol_partitions.txt"), sinfo)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30", 30 * 60),  # minutes
        ("45:30", 45 * 60 + 30),  # minutes:seconds
        ("3:00", 3 * 60),
        ("00:03:00", 3 * 60),  # hours:minutes:seconds
        ("12:00:00", 12 * 3600),
        ("2-12", (2 * 24 + 12) * 3600),  # days-hours
        ("1-02:30", (26 * 60 + 30) * 60),  # days-hours:minutes
        ("1-00:00:00", 86400),  # days-hours:minutes:seconds
        ("7-00:00:05", 7 * 86400 + 5),
        ("UNLIMITED", None),
        ("infinite", None),
        ("NONE", None),
    ],
)
def test_slurm_durations(text: str, seconds: int | None) -> None:
    assert parse_slurm_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "1h", "1:2:3:4", "-5", "1-", "2.5"])
def test_bad_durations_name_the_formats(text: str) -> None:
    with pytest.raises(SpecError, match="days-hours:minutes:seconds") as info:
        parse_slurm_duration(text, "MaxTime")
    assert info.value.field == "MaxTime"


@pytest.mark.parametrize(
    ("gres", "gpus"),
    [
        ("gpu:2", 2),
        ("gpu:h100:8(S:0-1)", 8),
        ("gpu:a100-sxm4-80gb:4(S:0,1)", 4),
        ("(null)", 0),
        ("gpu:a100:4(S:0),gpu:v100:2(S:1),shard:16", 6),
        ("shard:8", 0),
        ("gpu", 1),
    ],
)
def test_gres_gpu_count(gres: str, gpus: int) -> None:
    assert gres_gpu_count(gres) == gpus


def test_scontrol_line_keeps_values_with_equals_signs() -> None:
    (fields,) = parse_scontrol_partitions(fixture("scontrol_partition_gpu.txt"))
    assert fields["PartitionName"] == "gpu" and fields["MaxTime"] == "00:03:00"
    assert fields["TRES"].startswith("cpu=4,")


def test_sinfo_nodes_smallest_node_decides() -> None:
    nodes = parse_sinfo_nodes(fixture("sinfo_batch.txt"))
    assert len(nodes) == 64
    assert min(n.gpus for n in nodes) == 6 and min(n.cpus for n in nodes) == 48
    with pytest.raises(SpecError, match="sinfo output"):
        parse_sinfo_nodes("n1 two gpu:2\n")


def test_named_partition() -> None:
    slurm = cluster()
    limits = read_partition("long", runner=slurm)
    assert limits == PartitionLimits("long", None, None, None, 3, 0, 128)
    assert slurm.calls[-1] == ["sinfo", "-h", "-N", "-p", "long", "-o", "%N %c %G"]


def test_default_partition() -> None:
    limits = read_partition(None, runner=cluster())
    assert limits == PartitionLimits(
        name="batch",
        max_time_s=2 * 86400,
        default_time_s=4 * 3600,
        max_nodes=16,
        total_nodes=64,
        gpus_per_node=6,  # gpu064 has 4 A100 + 2 V100
        cpus_per_node=48,
    )
    assert limits.max_time_minutes == 2 * 1440


def test_unknown_partition_lists_the_real_ones() -> None:
    with pytest.raises(SpecError) as info:
        read_partition("gpus", runner=cluster())
    assert info.value.field == "cluster.partition"
    assert "this cluster has: debug, batch, long" in str(info.value)


def test_no_default_partition() -> None:
    line = fixture("scontrol_partitions.txt").replace("Default=YES", "Default=NO")
    with pytest.raises(SpecError, match="no default partition; name one of: debug, batch, long"):
        read_partition(None, runner=FakeSlurm(line, {}))


def test_partition_without_nodes() -> None:
    with pytest.raises(SpecError, match="no nodes"):
        read_partition("debug", runner=cluster())  # the fixture has no sinfo lines for it


def test_no_slurm_here() -> None:
    def missing(argv: Sequence[str]) -> CommandResult:
        raise CommandError(list(argv), 127, "", f"{argv[0]}: command not found")

    with pytest.raises(SlurmUnavailableError, match=r"no Slurm client here \(scontrol: command"):
        read_partition("gpu", runner=missing)


@pytest.mark.slurm
def test_real_cluster_partition(slurm_cluster: SlurmCluster) -> None:
    limits = read_partition(slurm_cluster.partition)
    assert limits.name == "gpu"
    assert limits.max_time_s == slurm_cluster.max_time_minutes * 60 == 180
    assert (limits.total_nodes, limits.gpus_per_node, limits.cpus_per_node) == (2, 2, 2)
    assert limits.max_nodes is None
    assert read_partition(None) == limits  # the test cluster's only partition is the default


def test_recorded_test_cluster_output() -> None:
    # Recorded from tests/slurm_cluster.py's cluster (Slurm 22.05): partition gpu, MaxTime 3.
    slurm = FakeSlurm(fixture("scontrol_partition_gpu.txt"), {"gpu": fixture("sinfo_gpu.txt")})
    assert read_partition("gpu", runner=slurm) == PartitionLimits("gpu", 180, None, None, 2, 2, 2)
    assert read_partition(None, runner=slurm).name == "gpu"
