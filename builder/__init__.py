"""Dockerfile / kade.yaml to content-addressed steps, executed without a daemon."""
