"""`python -m sqlmon`: the same as the `sqlmon` command."""

from .cli import main

main()
