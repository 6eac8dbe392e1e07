"""The contract between the login node and the compute node: what the login node sends (the
work to run, jobs.contract.work.Work, inside a calibration's CalibrationRequest, pickled by
submitit, or a training run's TrainConfig, the run folder's train.json), what comes back (a
Measurement, or a failure line that the login node parses out of the job's error text, with
every error class of jobs/ in ``failure``), the fields a user's own command receives
(``command_fields``) and the owner mark of a checkpoint folder that both sides read. Standard
library only: the login node imports all of it without torch.
"""
