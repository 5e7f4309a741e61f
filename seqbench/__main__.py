"""`python -m seqbench` is the same as the `seqbench` command."""

from seqbench.cli import main

main()
