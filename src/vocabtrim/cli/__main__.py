"""`python -m vocabtrim.cli`: the `vocabtrim` command."""

from . import main

main()
