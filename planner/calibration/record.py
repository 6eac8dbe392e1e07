"""The calibration record: the spec that ran, where, and every measurement, as YAML.

It is the input of ``plan-job plan``; it is written atomically and read back with checks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from jobs.contract.measurement import Measurement
from planner.atomic import write_text_atomic
from planner.calibration.devices import peak_for
from planner.calibration.record_checks import (
    check_dataclass,
    check_measurement,
    check_scaling_points,
)
from planner.errors import SpecError
from planner.scaling.fit import ScalingSection, section_from_dict
from planner.spec.load import parse_spec
from planner.spec.run_spec import RunSpec
from planner.yaml_input import YamlInputError, load_yaml, read_text

FORMAT = "plan-job/calibration/v1"
# A step CI this many times its target is a weak calibration: its table says so and the plan
# widens its P95 with it (planner.model.plan_limits.weak_calibration).
WEAK_CI_FACTOR = 2.0


@dataclass(frozen=True)
class JobInfo:
    executor: str
    job_id: str
    folder: str  # submitit's folder: logs and pickles
    stdout: str
    stderr: str
    queue_wait_s: float | None  # submit to start, where known
    wall_s: float  # submit to result


@dataclass(frozen=True)
class Derived:
    samples_per_s: float
    tokens_per_s: float
    achieved_tflops: float
    peak_tflops: float | None
    peak_source: str | None
    mfu: float | None


@dataclass(frozen=True)
class CalibrationRecord:
    spec: RunSpec
    measurement: Measurement
    derived: Derived
    job: JobInfo  # the smallest node count's job when several ran
    created: str
    # Every node count's job and the all-reduce fitted to them (calibration.nodes); None: the
    # one-device calibration, planned with planner.scaling.ring.ring_model.
    scaling: ScalingSection | None = None

    @property
    def fingerprint(self) -> str:
        return self.spec.step_fingerprint()

    def to_dict(self) -> dict[str, Any]:
        measurement = dataclasses.asdict(self.measurement)
        measurement["versions"] = dict(self.measurement.versions)
        measurement["step_times_s"] = [round(t, 6) for t in self.measurement.step_times_s]
        measurement["load_times_s"] = [round(t, 6) for t in self.measurement.load_times_s]
        measurement["slowdowns"] = [[a, b, round(r, 4)] for a, b, r in self.measurement.slowdowns]
        measurement["power_w"] = list(self.measurement.power_w)
        measurement["idle_power_w"] = list(self.measurement.idle_power_w)
        out = {
            "format": FORMAT,
            "created": self.created,
            "fingerprint": self.fingerprint,
            "spec": self.spec.to_dict(),
            "job": dataclasses.asdict(self.job),
            "derived": dataclasses.asdict(self.derived),
            "measurement": measurement,
        }
        if self.scaling is not None:
            out["scaling"] = self.scaling.to_dict()
        return out


def derive(spec: RunSpec, m: Measurement) -> Derived:
    samples_per_s = m.samples_per_step / m.step_mean_s
    achieved = m.flops_per_step / m.step_mean_s / 1e12
    peak = peak_for(
        m.device_name, spec.precision, spec.cluster.gpu_type, spec.calibration.peak_tflops
    )
    return Derived(
        samples_per_s=samples_per_s,
        tokens_per_s=samples_per_s * m.tokens_per_sample,
        achieved_tflops=achieved,
        peak_tflops=peak.tflops if peak else None,
        peak_source=peak.source if peak else None,
        mfu=achieved / peak.tflops if peak else None,
    )


def make_record(
    spec: RunSpec,
    measurement: Measurement,
    job: JobInfo,
    scaling: ScalingSection | None = None,
) -> CalibrationRecord:
    created = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    return CalibrationRecord(spec, measurement, derive(spec, measurement), job, created, scaling)


def default_record_path(spec: RunSpec) -> Path:
    """Where `plan-job calibrate` writes a record without -o: calibrations/<name>.yaml (the
    spec's name is one file name, so this stays in that folder)."""
    return Path("calibrations") / f"{spec.name}.yaml"


def save_record(record: CalibrationRecord, path: Path) -> None:
    text = yaml.safe_dump(record.to_dict(), sort_keys=False, default_flow_style=None, width=100)
    try:
        write_text_atomic(path, text)
    except OSError as exc:
        raise SpecError("-o", str(path), f"cannot write the record: {exc.strerror}") from None


def check_record_path(path: Path) -> None:
    """Before a calibration runs: that its record can be written at ``path`` (a folder that
    can be made, a file name the filesystem takes, write permission). Leaves nothing."""
    made: list[Path] = []
    try:
        if path.is_dir():
            raise SpecError("-o", str(path), "is a folder: name the record's file")
        probe = path.parent
        while not probe.exists() and probe != probe.parent:
            made.append(probe)
            probe = probe.parent
        path.parent.mkdir(parents=True, exist_ok=True)
        # The name the atomic write will use: the longest one it needs.
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise SpecError(
            "-o", str(path), f"cannot write the record there: {exc.strerror or exc}"
        ) from None
    finally:
        for folder in made:  # deepest first
            with contextlib.suppress(OSError):
                folder.rmdir()


def load_record(path: Path | str) -> CalibrationRecord:
    path = Path(path)
    try:
        raw = load_yaml(read_text(path))
    except OSError as exc:
        raise SpecError("--calibration", str(path), f"cannot read: {exc.strerror}") from exc
    except YamlInputError as exc:
        raise SpecError("--calibration", str(path), str(exc)) from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        found = raw.get("format") if isinstance(raw, dict) else type(raw).__name__
        raise SpecError(
            "--calibration",
            str(path),
            f"not a calibration record (format {found!r}, expected {FORMAT!r})",
        )
    try:
        spec = parse_spec(raw["spec"], source=f"{path} (spec)")
        m = dict(raw["measurement"])
        m["step_times_s"] = tuple(m.get("step_times_s", ()))
        m["load_times_s"] = tuple(m.get("load_times_s", ()))
        if "allreduce_times" in m:  # YAML gives lists back where the dataclass has tuples
            m["allreduce_times"] = tuple((int(b), float(t)) for b, t in m["allreduce_times"])
        measurement = Measurement(**m)
        scaling = raw.get("scaling")
        record = CalibrationRecord(
            spec,
            measurement,
            Derived(**raw["derived"]),
            JobInfo(**raw["job"]),
            str(raw["created"]),
            section_from_dict(scaling) if scaling else None,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise SpecError(
            "--calibration",
            str(path),
            f"a calibration record with missing or unknown fields ({exc})",
        ) from exc
    source = str(path)
    check_measurement(record.measurement, source)
    check_dataclass(record.derived, "derived", source)
    check_dataclass(record.job, "job", source)
    if record.scaling is not None:
        check_scaling_points(record.scaling.points, source)
    return record
