"""Tracking: MLflow runs, model packaging, registration, promotion and its history."""
