"""The closed loop on a laptop: pipeline -> serving + drift sidecar + Prometheus + Alertmanager -> retraining."""
