"""Benchmarks. `python -m bench` runs the speed suite; `python bench/serving.py` the server's."""
