"""Datasets: synthetic generation, ingestion into a versioned manifest, validation."""
