"""An emulated Kubernetes API server that the real kubectl, helm and lightkube accept (docs/sandbox-kube.md)."""

from herd_sandbox.kube.sandbox import KubeSandbox

__all__ = ["KubeSandbox"]
