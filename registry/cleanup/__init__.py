"""Registry cleanup by git history, cluster usage and release histories, inside the repositories given.

One module per concern: `policy` (keep policies, pure), `policy_file` (YAML loading), `gitwalk`
(git facts in bulk), `inuse` (what a workload uses, pure), `manifests` (images of rendered manifests,
pure), `helm` (Helm's release format, pure), `releases` (rollback targets, pure), `clusters` (cluster
reports), `scan` (the Kubernetes reads), `snapshot` (the registry reads), `plan` (pure: facts +
policy -> plan), `execute` (carry a plan out safely), `report` (render a plan or a result), `run`
(gather the facts).
"""
