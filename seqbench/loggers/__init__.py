"""Loggers hang off the training loop as callbacks: TensorBoard files and the console."""
