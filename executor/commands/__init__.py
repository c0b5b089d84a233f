"""`paraplan` subcommands that need torch, registered through the `paraplan.commands` entry point."""
