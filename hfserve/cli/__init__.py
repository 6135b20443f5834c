"""The ``hfserve`` command line: thin Typer shells over the library."""
