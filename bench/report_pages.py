"""Benchmark: how long `plan-job report` takes to build each kind of page (median of several
runs of the real command: a fresh process each, so the interpreter, plan-job's imports and
matplotlib's are in it), the page's size; and, on request, the screenshots README shows.

    .venv/bin/python bench/report_pages.py --calibration cal.yaml [--spec run.yaml] \\
        [--set KEY=VALUE ...] --run runs/x --history history.sqlite [--runs 5] \\
        [--screenshots docs]

Prints figures; asserts nothing about time (a shared 2-core machine would make that flaky).
Screenshots need Chromium (scripts/install-system-deps.sh) and Pillow (the test extras).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PLAN_JOB = Path(sys.executable).parent / "plan-job"

# (file, page kind, viewport width, height of the top kept; 0: the whole page)
SHOTS = (
    ("report-calibration.png", "calibration", 1280, 2150),
    ("report-run.png", "run", 1280, 2300),
    ("report-history.png", "history", 1280, 0),
    ("report-run-phone.png", "run", 400, 2000),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calibration", type=Path)
    parser.add_argument("--spec", type=Path)
    parser.add_argument("--set", dest="sets", action="append", default=[])
    parser.add_argument("--run")
    parser.add_argument("--history", type=Path)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--screenshots", type=Path, help="write README's PNGs here")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="plan-job-report-bench-"))
    kinds: dict[str, list[str]] = {}
    if args.calibration:
        extra = ["--spec", str(args.spec)] if args.spec else []
        for item in args.sets:
            extra += ["--set", item]
        kinds["calibration"] = [str(args.calibration), *extra]
    if args.run:
        kinds["run"] = [args.run]
    if args.history:
        kinds["history"] = ["--history", str(args.history)]
    pages = {}
    for kind, target in kinds.items():
        out = folder / f"{kind}.html"
        times, cpu = [], []
        for _ in range(args.runs):
            used = _children_cpu()
            start = time.perf_counter()
            proc = subprocess.run(
                [str(PLAN_JOB), "report", *target, "-o", str(out)],
                capture_output=True,
                text=True,
            )
            times.append(time.perf_counter() - start)
            cpu.append(_children_cpu() - used)
            if proc.returncode != 0:
                raise SystemExit(f"plan-job report {' '.join(target)}: {proc.stderr}")
        pages[kind] = out
        print(
            f"plan-job report ({kind} page): median {statistics.median(times):.2f} s, "
            f"min {min(times):.2f} s, max {max(times):.2f} s over {args.runs} runs (CPU time "
            f"median {statistics.median(cpu):.2f} s); {out.stat().st_size / 1024:,.0f} KiB"
        )
    if args.screenshots:
        screenshots(pages, args.screenshots)


def _children_cpu() -> float:
    """User and system CPU seconds of the ended child processes: a figure a busy machine
    stretches less than the wall clock."""
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


def screenshots(pages: dict[str, Path], folder: Path) -> None:
    import io

    from PIL import Image

    sys.path.insert(0, str(REPO))
    from tests.browser import Chromium

    folder.mkdir(parents=True, exist_ok=True)
    with Chromium() as browser:
        for name, kind, width, keep in SHOTS:
            if kind not in pages:
                continue
            view = browser.open(pages[kind], width)
            if view.errors:
                raise SystemExit(f"{pages[kind]}: {view.errors}")
            image = Image.open(io.BytesIO(view.full_page())).convert("RGB")
            if keep and image.height > keep:
                image = image.crop((0, 0, image.width, keep))
            # A page's few colours: a 256-colour palette keeps the file a third of the size
            # and the lines sharp.
            small = image.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=0)
            small.save(folder / name, optimize=True)
            print(
                f"{folder / name}: {image.width}x{image.height}, "
                f"{(folder / name).stat().st_size / 1024:,.0f} KiB"
            )


if __name__ == "__main__":
    main()
