"""The leave sequence: cordon → drain → (control planes) etcd → delete Node → stop k3s → complete
the lifecycle action, journaled so a restart resumes at the first unfinished step."""
