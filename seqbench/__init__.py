"""seqbench: compare vanilla RNN, LSTM and GRU on long-memory and real sequence tasks."""

__version__ = "0.1.0"
