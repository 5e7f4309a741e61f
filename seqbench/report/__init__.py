"""`seqbench-report`: one readable page (self-contained HTML, or Markdown with PNGs beside it)
per set of finished sweeps, built from their run directories only: no torch, no re-training.

collect reads the runs (through seqbench.compare), tables and content decide what to say,
figures draws what seqbench.plots does not, render writes HTML or Markdown, cli is the command.
"""
