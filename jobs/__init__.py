"""plan-job: what runs on compute nodes (calibration harness, workloads, training entry)."""
