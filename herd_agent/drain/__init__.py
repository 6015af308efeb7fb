"""Drain: which pods leave and how (``classify``), how long we may take (``budget``), and the
eviction loop over the Kubernetes API (``engine``)."""
