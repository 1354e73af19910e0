"""End to end: the simulated board, and the node on it against Mosquitto or a scripted broker
(marked e2e by conftest.py)."""
