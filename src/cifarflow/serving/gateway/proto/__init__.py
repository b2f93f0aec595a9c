"""The gateway's gRPC service definition and its generated code (see generate.py)."""
