"""`python -m planner.cli`, as `plan-job`."""

from planner.cli import main

main()
