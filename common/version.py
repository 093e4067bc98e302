"""kade's version, in one place (pyproject.toml reads it): no importlib.metadata at start-up."""

__version__ = "0.1.0"
