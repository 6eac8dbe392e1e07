"""How long a run still needs, from its own steps: what TARGET is (a progress file, a Hugging
Face trainer_state.json, a run folder or a job id; read through planner.runs.progress), its
steady step time, where the running segment stops and whether the queued chain reaches the
last step, and the table, JSON and progress bar that show it."""
