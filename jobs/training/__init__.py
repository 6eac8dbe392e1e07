"""A training job on the node, behind ``python -m jobs.train``: one job of a run resumes from
the newest checkpoint, trains towards ``total_steps`` and leaves, saved, when done, told to
stop, or before its stop time. Two ways, one per kind of work: ``builtin`` trains a workload
in this process (its step loop, checkpoints and stop decision), ``command`` launches the
user's own training command, fills in its fields and forwards the stop signals to it
(``trainer_state`` reads a Hugging Face Trainer's checkpoints from the outside).
"""
