"""Command-line interface: thin wrappers that parse, validate, call and print."""
