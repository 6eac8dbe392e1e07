"""A calibration job on the node: time the run's real training step until the steady step
time is known well enough, and measure start-up, warm-up, memory, checkpoint and evaluation
costs. Two ways in, one per kind of work: ``builtin`` builds a workload (a built-in model or
the user's ``workload.function``) and times its steps in this process, data-parallel across
the job's tasks; ``command`` runs the user's own training command and reads the steps it
reports. Both return a jobs.contract.measurement.Measurement; the statistics of the steady
state (``stats``) are shared with the login node.
"""
