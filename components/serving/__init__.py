"""Ray Serve application for the registry's ``@champion`` models.

Modules, one job each:

- ``settings``: typed live settings (the deployments' ``user_config``) and app arguments.
- ``errors``: the request error type (4xx, 503 + ``Retry-After``), its JSON body, and which
  model-call failures mean a lost replica (retried once).
- ``faults``: the chaos tests' fault injection (a hung replica, off unless its env var is set).
- ``decode``: request body → RGB image, with content-type, byte and pixel limits.
- ``v2``: the Open Inference Protocol v2 (KServe / Triton) REST tensors, JSON and binary.
- ``runtime``: a loaded model version (registry → device → warm-up) and its batched forward.
- ``model_server``: the per-task model deployment (dynamic batching, alias polling, swap).
- ``app``: the FastAPI ingress deployment and the application builder (``app``, ``build_app``).
"""
