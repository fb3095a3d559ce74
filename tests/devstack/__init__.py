"""The project's local stack: real etcd, kube-apiserver, kube-controller-manager,
PostgreSQL and pachd, built from source and run on 127.0.0.1 (see stack.py)."""
