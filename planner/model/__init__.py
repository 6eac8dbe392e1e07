"""From a calibration record to a plan: the time model (work, wall time P50/P95, segments),
the step time by node count (the ring all-reduce model, or the fit of a multi-node
calibration), the checkpoint interval, the node cap and what a plan rests on beyond its
calibration, the estimates people make instead, make_plan's choice of node count, the Plan
dataclasses every later step reads, and the plan's table and JSON."""
