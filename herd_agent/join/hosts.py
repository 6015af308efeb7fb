"""Moved to :mod:`herd_agent.host.hosts` (join and the watcher both keep the hosts block).

A thin re-export kept while other branches still import the old path; new code imports
``herd_agent.host.hosts``.
"""

from herd_agent.host.hosts import BEGIN, END, HOSTS_PATH, HostsFile, change, parse, render, sync

__all__ = ["BEGIN", "END", "HOSTS_PATH", "HostsFile", "change", "parse", "render", "sync"]
