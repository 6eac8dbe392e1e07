"""Talking to Slurm from the login node: what a partition allows (scontrol, sinfo), what the
queue and the controller say about a job (squeue, scontrol, sacct), how ended jobs ended
(accounting), and submitting the calibration job through submitit. Every command goes through
planner.shell.run_command; nothing here knows about plans or run folders."""
