"""The kade command line: wires registry/, builder/ and deployer/ together."""

__version__ = "0.1.0"   # the one place (pyproject.toml reads it): no importlib.metadata at start-up
