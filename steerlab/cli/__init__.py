"""The ``steerlab`` command line: thin typer shells over the library API."""
