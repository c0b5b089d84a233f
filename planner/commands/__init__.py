"""`paraplan` subcommands, one module each."""
