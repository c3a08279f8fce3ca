"""Hyperparameter search with Ray Tune over the training pipeline (one TorchTrainer per trial)."""
