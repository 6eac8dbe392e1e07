"""What the calibration and the training share on a compute node: the device and building the
workload (``runtime``), data-parallel training across the tasks that srun or torchrun starts
(``distributed``), torch.compile of the model (``compiling``), and the stop signals. Nothing
here imports torch at import time.
"""
