"""Exported artifacts of a checkpoint: ONNX and ``torch.export`` programs, with measured parity.

Layering: above ``core < data < models < tracking < training`` (it reuses the checkpoint and
registry loaders and THE evaluator), below ``serving`` (whose ONNX runtime loads what this
package writes) and ``cli``. It never imports from ``serving``, ``report``, ``cli`` or
``pipelines``.

- :mod:`~components.export.graph`: the exported graph (the serving input contract,
  normalisation inside) and the two exporters;
- :mod:`~components.export.runners`: exported files as ``nn.Module`` look-alikes, so the
  evaluator, postprocessing and serving run them unchanged;
- :mod:`~components.export.parity`: differences, metrics and latency, PyTorch vs exported;
- :mod:`~components.export.publish`: artifacts on the model version's MLflow run, and back;
- :mod:`~components.export.run`: ``vitpipe export`` end to end.
"""
