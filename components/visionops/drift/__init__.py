"""Drift monitoring: the reference profile stored in a model bundle, windowed Evidently drift, live quality
and the retraining trigger, served by the ``visionops monitor`` sidecar.

Modules: :mod:`~visionops.drift.reference` (reference profile + embedding projection),
:mod:`~visionops.drift.detect` (every Evidently call), :mod:`~visionops.drift.window` (bounded window),
:mod:`~visionops.drift.quality` (live precision/recall), :mod:`~visionops.drift.trigger` (retraining trigger),
:mod:`~visionops.drift.cli` (commands). The sidecar is laid out like ``visionops.serving``:
:mod:`~visionops.drift.settings` (``MonitorSettings``), :mod:`~visionops.drift.metrics` (the Prometheus metrics
table), :mod:`~visionops.drift.monitor` (the monitor logic) and :mod:`~visionops.drift.service` (HTTP handler and
server).
"""
