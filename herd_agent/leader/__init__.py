"""Leader mode: one elected control plane applies the cluster's Helm releases and GitOps root.

Split by concern: :mod:`.election` (Lease election, client-go's algorithm), :mod:`.fence` (the
epoch check before every write), :mod:`.releases` (the declared set, helmfile field names),
:mod:`.dag` (needs → order), :mod:`.helm` (the real helm 3/4), :mod:`.records` (release records),
:mod:`.readiness`, :mod:`.apply`, :mod:`.stuck` (pending-* recovery), :mod:`.secrets` (values
files), :mod:`.manifests` (server-side apply), :mod:`.status` (ConfigMap, Events, metrics),
:mod:`.plan` and :mod:`.service` (the long-running process). See docs/leader.md.
"""
