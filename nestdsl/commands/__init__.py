"""Subcommands of the `nestdsl` command line, one per module."""
