"""The termination watcher (``herd-agent watch``, ``herd-agent.service``, Type=notify).

- :mod:`.monitors`: one monitor per IMDS signal (target lifecycle state, spot instance-action,
  rebalance, scheduled events), each returning a :class:`.events.TerminationEvent` or None;
- :mod:`.loop`: the :class:`Watcher` — polls the monitors and dispatches, answers SIGTERM;
- :mod:`.periodic` and :mod:`.operations`: hosts refresh, etcd gc and metrics as named periodic
  operations on their own thread;
- :mod:`.reactions`: leave, cordon, resume and the Auto Scaling confirmation, through the leave
  package's public API.

The watcher imports no boto3 and no Kubernetes client until an event or an operation needs them.
See docs/watch.md.
"""

from herd_agent.watch.loop import Watcher
from herd_agent.watch.reactions import system_is_shutting_down

__all__ = ["Watcher", "system_is_shutting_down"]
