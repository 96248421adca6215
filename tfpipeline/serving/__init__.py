"""A TensorFlow Serving compatible REST server for the SavedModels this project exports.

One concern per module: `servable` (one loaded version), `versions` (discover, load, swap),
`batching` (merge concurrent requests), `validation` (request JSON to checked arrays and back),
`app` (aiohttp routes and the server's lifetime). `python -m tfpipeline.serve` is the CLI.
"""
