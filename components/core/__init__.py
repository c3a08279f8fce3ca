"""Contracts shared by every stage: checkpoints, typed configs, devices and precision."""
