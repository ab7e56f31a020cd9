"""The method itself (paper section 3.1): plain Python and torch, no Ray, no web framework, no
command line. The bottom layer: every other package imports it, it imports none of them
(``lint-imports`` checks this; see ``[tool.importlinter]`` in pyproject.toml).

``media`` and ``download`` get frames; ``segment`` finds shots; ``faces`` detects faces;
``tracks`` groups them into face tracks; ``models/`` holds the members and ensembles;
``model_access`` is the one interface through which the analysis calls anything with weights
(in process, or through Serve deployments); ``aggregate`` turns face scores into track, shot and
video scores; ``gallery`` draws the pictures; ``result`` is the output schema; ``analyze``
orchestrates all of it. ``version`` holds the service version every layer reports.
"""
