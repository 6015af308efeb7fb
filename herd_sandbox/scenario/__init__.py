"""``herd-sandbox run``: whole-cluster scenarios in the local region, with checks.

Modules: :mod:`.cluster` (region + API + machines + monitors), :mod:`.scenarios` (steps and the
named scenarios), :mod:`.checks` (the end-of-run checks), :mod:`.timeline`, :mod:`.runner` (one
run: bring-up, steps, checks, teardown, report), :mod:`.tools` (etcd and kubectl), :mod:`.cli`.
See docs/sandbox.md.
"""
