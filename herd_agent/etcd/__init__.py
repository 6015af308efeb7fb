"""etcd membership for control planes: a v3 JSON-gateway client, the cluster-wide membership
lock, join/found/leave, stale-member cleanup from cloud truth, and status (docs/etcd.md).

Modules: ``client`` (gateway client, typed errors), ``quorum`` (pure quorum math and
``--initial-cluster``), ``lock`` (lease + compare-and-create lock), ``membership`` (join, found,
leave), ``gc`` (stale members, ``InstanceOracle``), ``status``, ``journal`` (identity journal,
data-dir rotation), ``settings``, ``cli`` (``herd-agent etcd …``). Nothing here imports boto3 at
import time.
"""
