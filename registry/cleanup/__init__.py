"""Registry cleanup by git history and cluster usage.

One module per concern: `policy` (keep policies, pure), `policy_file` (YAML loading), `gitwalk`
(git facts in bulk), `inuse` (cluster scan), `facts` (registry snapshot), `plan` (pure: facts +
policy -> plan), `execute` (carry a plan out safely), `report` (render a plan or a result).
"""
