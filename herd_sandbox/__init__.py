"""The local region: emulated AWS (moto plus lifecycle hooks), IMDSv2 per instance, a Kubernetes
API emulator, and real etcd; see docs/sandbox.md.

A harness, not part of the agent: it is its own distribution (``herd_sandbox/pyproject.toml``,
console script ``herd-sandbox``), depends on herd-agent, and the agent never imports it. Its
checks use their own code (``herd_sandbox.verify``), written from the etcd, k3s and Kubernetes
documentation, never the agent functions they check.
"""
