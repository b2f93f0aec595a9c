"""A TensorFlow-Serving-compatible model server (gRPC + REST) over the model store."""
