"""Benchmarks: the measuring code behind ``dfd bench`` (repeatable figures, never timed tests).

One module per benchmark, each with a pydantic settings model (its command-line options) and a
``bench_*(settings)`` function that measures, prints the tables and returns the figures:
:mod:`bench.models` (ensemble faces/s per backend and batch size), :mod:`bench.analyze` (per-stage
time, growth with video length), :mod:`bench.serve` (image jobs through the service),
:mod:`bench.evaluate` (Ray Data actor pool against a plain loop), :mod:`bench.attack` (attacked
faces/s), :mod:`bench.train` (Ray Train images/s per worker count) and :mod:`bench.cluster`
(local multi-node clusters and a GPU-cluster estimate).

What they share: :mod:`bench.harness` (spawned processes, peak RSS, percentiles, Ray session,
JSON), :mod:`bench.http_load` (load on a running service), :mod:`bench.clips` (clips cut from the
shared test media) and :mod:`bench.localcluster` (a Ray cluster of several nodes on this
machine); the service on local Ray is :mod:`serve.local`, which ``dfd serve`` runs too.

Layering: ``dfd`` (the command line) imports this package; this package never imports ``dfd``.
"""
