"""Kubernetes mode, the pure parts: CRDs generated from Berth's schemas, the NetworkPolicy evaluator.

Nothing here does I/O or imports a Kubernetes client: these are functions from documents to documents
(or verdicts), tested without a cluster.  See docs/kubernetes.md.
"""
