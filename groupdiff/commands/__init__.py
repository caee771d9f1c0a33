"""Subcommands of the ``groupdiff`` CLI, one module each."""
