"""One module per `kade` command; each exposes `register(subparsers)`."""
