"""Runnable pipelines, one module per dataset: `python -m pipelines.<dataset>`."""
