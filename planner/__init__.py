"""plan-job's login-node side as a library: everything the CLI does, without click.

    from planner import load_spec, load_record, make_plan, corrections_for, emit, EmitOptions

    spec = load_spec("run.yaml")
    record = load_record("cal.yaml")  # what calibrate(spec, folder) measured, saved
    corrections = corrections_for(spec, None, record=record)  # from jobs of this kind
    plan = make_plan(spec, record, None, "cal.yaml", corrections=corrections)
    run = emit(plan, EmitOptions(out_dir=Path("runs/big"), workdir=Path.cwd()))

The names below are imported on first use (PEP 562), so `import planner.errors` (what the
CLI does first) stays as cheap as that module; none of them imports click, nor torch at
import. Errors: planner.errors (BadInputError: the input must change; JobError: a job did not
do its work). The packages, bottom up (each imports only those below it; README
"Architecture", tests/test_layers.py): spec, slurm and scaling, calibration, model, runs, eta,
followup, history, pages and cli.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# name in planner -> (module, name there)
_API: dict[str, tuple[str, str]] = {
    # the spec
    "RunSpec": ("planner.spec.run_spec", "RunSpec"),
    "load_spec": ("planner.spec.load", "load_spec"),
    "parse_spec": ("planner.spec.load", "parse_spec"),
    # calibrating (plan-job calibrate)
    "calibrate": ("planner.calibration.calibrate", "calibrate"),
    "job_folder": ("planner.calibration.calibrate", "job_folder"),
    "CalibrationRecord": ("planner.calibration.record", "CalibrationRecord"),
    "load_record": ("planner.calibration.record", "load_record"),
    "save_record": ("planner.calibration.record", "save_record"),
    "default_record_path": ("planner.calibration.record", "default_record_path"),
    # planning (plan-job plan)
    "PartitionLimits": ("planner.slurm.partition", "PartitionLimits"),
    "read_partition": ("planner.slurm.partition", "read_partition"),
    "Plan": ("planner.model.plan", "Plan"),
    "make_plan": ("planner.model.planning", "make_plan"),
    "Correction": ("planner.model.correction", "Correction"),
    "corrections_for": ("planner.history.correction", "corrections_for"),
    "CorrectedPlan": ("planner.history.corrected_plan", "CorrectedPlan"),
    "corrected_plan": ("planner.history.corrected_plan", "corrected_plan"),
    # the run folder and its chain (plan-job emit, submit)
    "EmitOptions": ("planner.runs.emit", "EmitOptions"),
    "EmittedRun": ("planner.runs.emit", "EmittedRun"),
    "emit": ("planner.runs.emit", "emit"),
    "submit_chain": ("planner.runs.chain", "submit_chain"),
    "load_plan": ("planner.runs.run_folder", "load_plan"),
    # watching (plan-job eta)
    "Eta": ("planner.eta.estimate", "Eta"),
    "eta_for": ("planner.eta.estimate", "eta_for"),
    "estimate": ("planner.eta.estimate", "estimate"),
    "observe_slurm": ("planner.eta.estimate", "observe_slurm"),
    "load_source": ("planner.eta.source", "load_source"),
    # after the jobs ran (plan-job resubmit, tighten)
    "RunState": ("planner.followup.state", "RunState"),
    "inspect_run": ("planner.followup.state", "inspect_run"),
    "Resubmission": ("planner.followup.resubmit", "Resubmission"),
    "prepare_resubmission": ("planner.followup.resubmit", "prepare"),
    "submit_resubmission": ("planner.followup.resubmit", "submit"),
    "TightenPlan": ("planner.followup.tighten", "TightenPlan"),
    "plan_tightening": ("planner.followup.tighten", "plan_tightening"),
    "apply_tightening": ("planner.followup.tighten", "apply_tightening"),
    # the history (plan-job history)
    "record_calibration": ("planner.history.database", "record_calibration"),
    "record_plan": ("planner.history.database", "record_plan"),
    "record_outcomes": ("planner.history.database", "record_outcomes"),
    # the report page (plan-job report)
    "calibration_page": ("planner.pages.build", "calibration_page"),
    "run_page": ("planner.pages.build", "run_page"),
    "history_page": ("planner.pages.build", "history_page"),
    "write_page": ("planner.pages.build", "write_page"),
    # errors
    "PlanJobError": ("planner.errors", "PlanJobError"),
    "BadInputError": ("planner.errors", "BadInputError"),
    "JobError": ("planner.errors", "JobError"),
}

# Checked against _API by tests/test_api.py: both name the same things.
__all__ = [
    "BadInputError",
    "CalibrationRecord",
    "CorrectedPlan",
    "Correction",
    "EmitOptions",
    "EmittedRun",
    "Eta",
    "JobError",
    "PartitionLimits",
    "Plan",
    "PlanJobError",
    "Resubmission",
    "RunSpec",
    "RunState",
    "TightenPlan",
    "apply_tightening",
    "calibrate",
    "calibration_page",
    "corrected_plan",
    "corrections_for",
    "default_record_path",
    "emit",
    "estimate",
    "eta_for",
    "history_page",
    "inspect_run",
    "job_folder",
    "load_plan",
    "load_record",
    "load_source",
    "load_spec",
    "make_plan",
    "observe_slurm",
    "parse_spec",
    "plan_tightening",
    "prepare_resubmission",
    "read_partition",
    "record_calibration",
    "record_outcomes",
    "record_plan",
    "run_page",
    "save_record",
    "submit_chain",
    "submit_resubmission",
    "write_page",
]


def __getattr__(name: str) -> Any:
    try:
        module, attribute = _API[name]
    except KeyError:
        raise AttributeError(f"module 'planner' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})


if TYPE_CHECKING:  # what a type checker and an editor see; at run time __getattr__ imports
    from planner.calibration.calibrate import calibrate, job_folder
    from planner.calibration.record import (
        CalibrationRecord,
        default_record_path,
        load_record,
        save_record,
    )
    from planner.errors import BadInputError, JobError, PlanJobError
    from planner.eta.estimate import Eta, estimate, eta_for, observe_slurm
    from planner.eta.source import load_source
    from planner.followup.resubmit import Resubmission
    from planner.followup.resubmit import prepare as prepare_resubmission
    from planner.followup.resubmit import submit as submit_resubmission
    from planner.followup.state import RunState, inspect_run
    from planner.followup.tighten import TightenPlan, apply_tightening, plan_tightening
    from planner.history.corrected_plan import CorrectedPlan, corrected_plan
    from planner.history.correction import corrections_for
    from planner.history.database import record_calibration, record_outcomes, record_plan
    from planner.model.correction import Correction
    from planner.model.plan import Plan
    from planner.model.planning import make_plan
    from planner.pages.build import calibration_page, history_page, run_page, write_page
    from planner.runs.chain import submit_chain
    from planner.runs.emit import EmitOptions, EmittedRun, emit
    from planner.runs.run_folder import load_plan
    from planner.slurm.partition import PartitionLimits, read_partition
    from planner.spec.load import load_spec, parse_spec
    from planner.spec.run_spec import RunSpec
