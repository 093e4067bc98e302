"""Small helpers every part of kade needs (durations, git, SOURCE_DATE_EPOCH, network wait limits).

The bottom layer: it imports nothing of ours, so registry/, kube/, builder/, deployer/ and kade/ all
use it instead of writing their own copy.
"""
