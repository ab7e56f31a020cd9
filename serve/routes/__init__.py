"""The ``/v1`` and operations routes of the HTTP API, one router per resource.

- :mod:`serve.routes.operations`: ``/healthz``, ``/readyz``, ``/metrics`` and the request metrics;
- :mod:`serve.routes.about`: ``/v1/version`` and ``/v1/model-card``;
- :mod:`serve.routes.jobs`: ``/v1/jobs`` and everything under it;
- :mod:`serve.routes.access`: the :data:`~serve.routes.access.Caller` dependency (API keys,
  rate limits).

:func:`serve.api.create_api` includes them in this order; the MeVer routes are in
:mod:`serve.mever`.
"""
