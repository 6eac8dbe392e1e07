"""plan-job: what runs on compute nodes.

The modules at this level are the entry points that scripts and users name, and they stay
where they are: ``python -m jobs.train`` (the training entry of the emitted scripts),
``jobs.entry`` (what submitit runs for a calibration), ``jobs.report`` and the callbacks
``jobs.hf_callback`` / ``jobs.lightning_callback`` (a user's own script reporting its steps),
``jobs.progress`` (the progress file) and ``jobs.workloads`` (built-in workloads and the
contract of a user's). The work is grouped below them: ``contract`` (what the login node
sends and gets back), ``calibration`` and ``training`` (each for a built-in workload and for a
user's own command), and ``node`` (runtime, data-parallel runs, signals, processes). The
other modules here (measurement, harness, distributed, ...) are compatibility shims that
re-export the names of the modules that moved; new code imports the subpackages.
"""
