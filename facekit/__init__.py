"""Shared face tooling: the frozen expert networks, face I/O, data sets, and safe checkpoint loading."""
