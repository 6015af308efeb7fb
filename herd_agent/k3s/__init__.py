"""k3s on this instance: its names (node, unit), its config, and starting and stopping it.

The one owner of every k3s-derived fact: :func:`herd_agent.k3s.names.node_name` and
:func:`herd_agent.k3s.names.unit_for`; nothing else computes them.
"""
