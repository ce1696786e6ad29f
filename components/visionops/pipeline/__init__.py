"""Kubeflow Pipelines adapters: thin components, the training pipeline with its gate, compile, local runs
(``kfp.local``) and submission. Importing this package imports nothing heavy; import the submodules.
"""
