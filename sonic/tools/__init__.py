"""One module per command-line tool of `python -m sonic`."""
