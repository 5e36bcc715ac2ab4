"""One module per `python -m sonic` command (see `sonic.cli.COMMANDS`)."""
