"""Training: the Ray Train loop, checkpoints, evaluation, MLflow logging."""
