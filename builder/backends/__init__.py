"""Where build stages run: `kubernetes` (one pod per stage, see kubernetes.py) besides the local
process that builder/build.py uses by default."""
