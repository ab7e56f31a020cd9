"""Metrics, reports and model cards: the layer above the method and below every runner.

- ``metrics`` (balanced accuracy, AUC, ROC, bootstrap intervals) and ``group_metrics`` (per
  dataset, manipulation and split); ``image_metrics`` (perturbation norms, PSNR, SSIM).
- ``runs`` and ``attack_runs``: the run-folder formats that ``batch`` writes and the reports
  read, so no report imports the code that produced a run.
- ``run_metrics`` (an evaluation run's metrics), ``report_tables`` and ``report`` (dataset
  tables and ROC figures), ``attack_summary`` and ``robustness`` (attack tables), ``model_card``
  (one function per section of Mitchell et al.).
- One way to render them all: ``render`` (tables, formatting, Markdown and HTML documents) and
  ``plots`` (matplotlib figures).

Imports only ``pipeline``.
"""
