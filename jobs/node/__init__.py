"""What the calibration and the training share on a compute node: the device and building the
workload (``runtime``); data-parallel runs across the tasks that srun or torchrun starts (who
this process is, ``world``; the collectives, ``group``; a workload made one rank of the run,
``data_parallel``); the stop signals (``signals``); a user's command as a process group that
dies with its launcher (``process``); and torch.compile of the model (``compiling``). Nothing
here imports torch at import time.
"""
