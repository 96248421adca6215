"""Benchmarks. `python -m bench` runs the speed suite; `python -m bench.serving` the server's."""
