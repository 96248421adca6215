"""A TensorFlow Serving compatible server (gRPC and REST) for any SavedModel.

One concern per module: `servable` (one loaded version, TF2 or TF1) with `session_loader`
(TF1 exports in a session), `versions` (discover, load, swap), `models` (the model table),
`batching` (merge concurrent requests), `validation` (predict JSON to arrays and back),
`tensors` (TensorProto to arrays and back), `examples` (tf.Example inputs), `inference`
(Classify, Regress, MultiInference), `metadata` (GetModelMetadata), `grpc_service` and
`app` (the gRPC and REST front ends), `server` (the lifetime). `python -m tfpipeline.serve`
is the CLI.
"""
