"""After a run's jobs have run: where the run stands (its jobs' final states, the newest
checkpoint, the pace it showed), resubmitting the rest of a run that stopped short, lowering
pending segments' --time to that pace (tighten), the preview made without Slurm, and the
tables that say what was found and decided."""
