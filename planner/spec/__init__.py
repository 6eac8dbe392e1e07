"""The run spec: what to train, on how much data, with which batch, on which cluster, how to
calibrate and plan it. Frozen dataclasses, read from YAML and --set overrides with every field
validated (an unknown key fails with its close match); and checkpoint.dir as the login node
checks it before anything is submitted (checkpoint_dir: writable, room, node-local, another
run's checkpoints), which calibrate and emit both need. Torch-free."""
