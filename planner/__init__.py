"""plan-job: the login-node side (CLI, spec, planning). Never imports torch at start-up."""
