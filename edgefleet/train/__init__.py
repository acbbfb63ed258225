"""Training: client data, the DP local update (Opacus), Ray Train jobs, DeepSpeed distillation."""
