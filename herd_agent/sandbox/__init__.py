"""The local region: emulated AWS (moto plus lifecycle hooks), IMDSv2 per instance, a Kubernetes
API emulator, and real etcd; see docs/sandbox.md. Installed with ``pip install .[sandbox]``.

Nothing here is imported by the agent's own code paths.
"""
