"""The run folder and its chain of Slurm jobs: the folder's file names and what reads and
writes them (planner.runs.run_folder), writing the folder whole with its segment scripts
(emit), submitting them as an afterany chain, and why a submitted run has no progress line
yet."""
