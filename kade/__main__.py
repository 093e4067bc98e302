from kade.cli import entry

entry()
