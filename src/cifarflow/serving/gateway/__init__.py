"""The gateway: REST, its own gRPC service and a web page in front of a model server."""
