"""How the optimizer step time changes with the node count: the ring all-reduce model a
one-node calibration extrapolates with (``ring``), and the model fitted to a multi-node
calibration's jobs, with the record's section that holds them (``fit``). Below calibration,
which measures the points, and model, which plans with them. Torch-free."""
