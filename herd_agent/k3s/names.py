"""The names k3s knows this instance by: the Node name and the systemd unit.

One owner each (every caller asks here):

- **Node name**: ``k3s.node_name: instance-id`` (default) → the EC2 instance id; ``hostname`` → the
  first label of IMDS ``meta-data/local-hostname``, lowercased (``ip-10-0-1-5.ec2.internal`` →
  ``ip-10-0-1-5``: what the EC2 hostname is and what k3s would pick from it). The agent passes it
  to k3s as ``node-name`` in both modes, so k3s and the agent never disagree (a mismatch is what
  made NTH drain the wrong name, aws-node-termination-handler #857).
- **Unit**: ``k3s.service`` on servers (control planes), ``k3s-agent.service`` on agents, as the
  k3s install script names them (docs.k3s.io, "Installation options").
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from herd_agent.discovery.identity import Identity

SERVER_UNIT = "k3s.service"
AGENT_UNIT = "k3s-agent.service"
UNITS = (SERVER_UNIT, AGENT_UNIT)


def node_name(mode: str, ident: Identity) -> str:
    """The Node name of this instance.

    Args:
        mode: the ``k3s.node_name`` setting, ``instance-id`` or ``hostname``.
        ident: this instance (``instance_id``, ``local_hostname``; both validated by
            :func:`~herd_agent.discovery.identity.read_identity`).

    Raises:
        ValueError: an unknown mode, or ``hostname`` mode with no local hostname known.
    """
    if mode == "instance-id":
        return ident.instance_id
    if mode == "hostname":
        label = ident.local_hostname.split(".", 1)[0].lower()
        if not label:
            raise ValueError("k3s.node_name is 'hostname' but IMDS gave no meta-data/local-hostname")
        return label
    raise ValueError(f"k3s.node_name must be 'instance-id' or 'hostname' (got {mode!r})")


def unit_for(control_plane: bool) -> str:
    """``k3s.service`` for a control plane (k3s server), ``k3s-agent.service`` for a worker."""
    return SERVER_UNIT if control_plane else AGENT_UNIT
