"""Applications over the library: the CLI commands' functions and the zero-to-few-shot upgrade."""
