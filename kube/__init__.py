"""What every part of kade needs from Kubernetes: the configuration (a kubeconfig, or the pod's
service account) and an API client whose every wait is bounded. Builds (builder/backends), deploys
(deployer/kube.py), cleanup's cluster scan (registry/cleanup/scan.py) and the builder pods
(`kade build-stage`) all get their client here; none touches the `kubernetes` package's global
default configuration. Imports `common` only.
"""
