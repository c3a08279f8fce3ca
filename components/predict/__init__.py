"""Offline batch inference with Ray Data: a folder, a prefix or a labelled split through a
registered model or a checkpoint, answers to Parquet (``python -m pipelines.predict``)."""
