"""The run folder and its chain of Slurm jobs: the folder's file names and what reads and
writes them (planner.runs.run_folder), writing the folder whole with its segment scripts
(emit), submitting them as an afterany chain, and the run's own record as its jobs left it:
the progress file read in one streaming pass (progress, progress_reader, a summary per job in
job_log), how a job ended when Slurm no longer says (inferred_outcome) and why
(diagnosis), and why a submitted run has no progress line yet (no_progress)."""
