#!/usr/bin/env bash
# The example report pages and their screenshots (README "Report"), from a real run on the
# test cluster: docs/report-example.yaml calibrated on 1 and 2 nodes, sized to ~7 minutes,
# run to the end as a chain of 3-minute jobs, its jobs recorded in a fresh history; a short
# GPT run beside it so the history holds two workloads; then the three pages, and
# screenshots of them under docs/.
#
#   .venv/bin/python -m tests.slurm_cluster up /tmp/c &      # as root; prints SLURM_CONF
#   export SLURM_CONF=/tmp/c/slurm.conf
#   bash docs/report-example.sh [OUT]                        # ~12 minutes on 2 cores
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(realpath -m "${1:-/tmp/plan-job-report-example}")
mkdir -p "$out"
export PLANJOB_HISTORY="$out/history.sqlite" OMP_NUM_THREADS=1
pj=.venv/bin/plan-job

# The watch ends at the last step; a segment the run no longer needs still starts, sees the
# run done and ends. The history records ended jobs only: wait for the private cluster's
# queue to empty.
wait_for_queue() {
    while [[ -n "$(squeue -h -o %i)" ]]; do sleep 5; done
}
spec=docs/report-example.yaml
ck="checkpoint.dir=$out/ck"

$pj calibrate "$spec" --set "$ck" -o "$out/cal.yaml"
# ~7 minutes of steps at the calibrated pace: three jobs under the partition's 3 minutes.
samples=$(.venv/bin/python -c "
import sys, yaml
m = yaml.safe_load(open(sys.argv[1]))['measurement']
print(int(420 / m['step_mean_s']) * 16)" "$out/cal.yaml")
size="data.samples=$samples"
$pj plan "$spec" --calibration "$out/cal.yaml" --set "$ck" --set "$size"
$pj emit "$spec" --calibration "$out/cal.yaml" --set "$ck" --set "$size" -o "$out/run"
$pj submit "$out/run" --watch 15
wait_for_queue
$pj history --update "$out/run"

# A second workload for the history: GPT tiny, one job.
gpt=(--set workload.name=gpt --set workload.preset=tiny --set name=report-example-gpt
     --set "checkpoint.dir=$out/ck-gpt" --set calibration.nodes=[1] --set data.samples=4000)
$pj calibrate "$spec" "${gpt[@]}" -o "$out/cal-gpt.yaml"
$pj emit "$spec" --calibration "$out/cal-gpt.yaml" "${gpt[@]}" -o "$out/run-gpt"
$pj submit "$out/run-gpt" --watch 15
wait_for_queue
$pj history --update "$out/run-gpt"

$pj report "$out/cal.yaml" --spec "$spec" --set "$ck" --set "$size" -o "$out/calibration.html"
$pj report "$out/run" -o "$out/run.html"
$pj report --history -o "$out/history.html"
.venv/bin/python bench/report_pages.py --screenshots docs --calibration "$out/cal.yaml" \
    --spec "$spec" --set "$ck" --set "$size" --run "$out/run" --history "$PLANJOB_HISTORY"
