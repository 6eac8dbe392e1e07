"""Workloads: built-in models (jit, gpt) and the contract a user workload follows."""
