"""The vlkit command line (Typer): thin over the library."""
