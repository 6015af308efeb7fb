"""Found: start a new one-member etcd cluster (external mode).

The caller decides founding (an atomic conditional write in the join flow, ``join/founder.py``);
this module only acts on "I am the founder":

1. When the identity journal, the data dir and our peer URL agree, this is a reboot: start the
   unit and stop (a founder's member found again after a restart).
2. Otherwise rotate any old data dir, create or fetch the cluster CA (TLS; the founder's
   conditional create), issue our member certificate, write the env file with
   ``ETCD_INITIAL_CLUSTER=<self>=<peer URL>`` and ``ETCD_INITIAL_CLUSTER_STATE=new`` (etcd's
   "Clustering Guide", static bootstrap), start the unit and wait for a leader.
"""

from __future__ import annotations

import logging

from herd_agent.etcd.client import member_id_hex
from herd_agent.etcd.journal import data_dir_in_use, read_journal, rotate_data_dir
from herd_agent.etcd.member import JoinResult, LocalMember

log = logging.getLogger(__name__)


def found(me: LocalMember) -> JoinResult:
    """Start a new one-member cluster (or restart ours when the journal and data dir agree).

    Raises:
        CommandError: ``systemctl start`` failed.
        WaitTimeout: the member never reported a leader.
        PkiError: TLS is on and the cluster CA could not be created or read.
    """
    settings = me.settings
    journal = read_journal(me.root, settings.data_dir)
    if journal and journal.state != "removed" and data_dir_in_use(me.root, settings.data_dir) \
            and journal.peer_url == me.peer_url:
        me.ensure_certificates(founder=True)
        me.systemctl("start")
        return JoinResult(journal.cluster_id, journal.member_id, reused=True)
    if data_dir_in_use(me.root, settings.data_dir):
        rotate_data_dir(me.root, settings.data_dir, "founding a new cluster")
    me.ensure_certificates(founder=True)
    me.write_env(f"{me.identity.name}={me.peer_url}", "new")
    me.systemctl("start")
    client = me.client([me.client_url])
    member_id = me.wait_serving(client)
    cluster_id, _ = client.member_list()
    me.journal(cluster_id, member_id, "member")
    log.info("founded etcd cluster %s as member %s", member_id_hex(cluster_id), member_id_hex(member_id))
    return JoinResult(cluster_id, member_id)
