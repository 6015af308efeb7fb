"""The join sequence: identity → discovery → /etc/hosts → kernel → token → etcd → k3s → Ready → hook."""
