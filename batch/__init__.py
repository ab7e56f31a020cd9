"""Ray Data and Ray Train runs over whole datasets: dataset readers, evaluation runs, attack runs,
face extraction and training. Writes run folders through the formats ``evaluation`` owns, and may
reuse a running Serve application's deployments; imports ``serve``, ``evaluation`` and
``pipeline``, never ``bench`` or ``dfd``.
"""
