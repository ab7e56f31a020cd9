"""The online service on Ray Serve: one deployment per model, the job runner, the FastAPI
ingress (``api`` assembles the routers in ``routes/``), job store (``jobstore/``: the interface
and one module per backend), cache, object storage, keys, problem+json errors and the web UI.
Imports ``evaluation`` (the model card) and ``pipeline``; never ``batch`` or ``dfd``.
"""
