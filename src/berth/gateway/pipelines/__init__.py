"""Pipelines on the request path: the compiled table, the DAG executor, and its REST/gRPC entry points."""
