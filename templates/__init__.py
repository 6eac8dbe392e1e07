"""sbatch templates shipped with plan-job."""
