"""A calibration job on the node: time the run's real training step until the steady step
time is known well enough, and measure start-up, warm-up, memory, checkpoint and evaluation
costs. Two ways in, one per kind of work: ``builtin`` builds a workload (a built-in model or
the user's ``workload.function``) and times its steps in this process (``steps``),
data-parallel across the job's tasks (``rank_failure``, ``allreduce_timing``); ``command``
runs the user's own training command (``command_run``) and reads the steps it reports
(``command_reports``). Both return a jobs.contract.measurement.Measurement, with the
training entry's own start-up and warm-up (``fresh_start``) and this process's facts
(``host``); the statistics of the steady state (``stats``) are shared with the login node.
"""
