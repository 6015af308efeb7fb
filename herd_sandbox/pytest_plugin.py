"""The sandbox's pytest plugin: ``pytest_plugins = ["herd_sandbox.pytest_plugin"]`` in a conftest.

Fixtures:
- ``aws_region``, ``make_aws_region``: the local AWS region (``herd_sandbox.aws.pytest_fixtures``);
- ``kube_sandbox``, ``kube_sandbox_factory``, ``kube_kubeconfig``, ``kube_client``: the emulated
  Kubernetes API (``herd_sandbox.kube.pytest_fixtures``).
"""

from herd_sandbox.aws.pytest_fixtures import aws_region, make_aws_region
from herd_sandbox.kube.pytest_fixtures import kube_client, kube_kubeconfig, kube_sandbox, kube_sandbox_factory

__all__ = ["aws_region", "make_aws_region", "kube_client", "kube_kubeconfig", "kube_sandbox", "kube_sandbox_factory"]
