"""tfpipeline: TFDS input pipelines, Keras 3 model families, tuning, distribution and export.

The library is a set of plain functions; `pipelines/<dataset>.py` and the `tfpipeline.*`
command modules are thin layers over it.
"""

__version__ = "0.1.0"
