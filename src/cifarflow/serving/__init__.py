"""Serving: the model store, the model server, the gateway and the client.

- `store/`: versions in a local folder or S3 (`publish_model`, labels).
- `sync.py`: mirror complete versions into the folder TF Serving reads.
- `model_server/`: TensorFlow Serving's gRPC and REST APIs over the store.
- `gateway/`: REST, a gRPC service and a web page in front of a model server.
- `client.py`: `cifarflow predict`.
- `errors.py`: every serving error mapped once to HTTP and gRPC codes.
- `http.py`, `tensors.py`, `protos.py`: shared plumbing.

See docs/serving.md.
"""
