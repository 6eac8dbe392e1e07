"""What plan-job predicted and what the jobs then did, in a local SQLite database; the step
correction a new plan learns from it, per workload, partition and node count; and the tables
`plan-job history` prints."""
