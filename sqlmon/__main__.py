"""`python -m sqlmon` is the `sqlmon` command."""

from .cli import main

main()
