"""A training job on the node, behind ``python -m jobs.train``: one job of a run resumes from
the newest checkpoint, trains towards ``total_steps`` and leaves, saved, when done, told to
stop, or before its stop time. Two ways, one per kind of work: ``builtin`` trains a workload
in this process (where it starts, ``resume``; its step loop and stop decision, ``loop``; its
checkpoints, ``checkpoint``), ``command`` launches the user's own training command, fills in
its fields and forwards the stop signals to it (an unchanged Hugging Face Trainer's
checkpoints read from the outside, ``trainer_state``, and relayed as progress lines,
``trainer_relay``).
"""
