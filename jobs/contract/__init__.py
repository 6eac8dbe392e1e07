"""The contract between the login node and the compute node: what the login node sends (a
calibration's CalibrationRequest, through submitit's pickle; a training run's TrainConfig, as
the run folder's train.json), what comes back (a Measurement, or a failure line the login node
parses out of the job's error text), the fields a user's own command receives
(command_fields), and the owner mark of a checkpoint folder that both sides read. Standard
library only: the login node imports all of it without torch.
"""
