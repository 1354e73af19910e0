"""The host side of the simulator: the node process and its flash folder (simnode), `make sim`'s
runner and console (run), and the simulated serial board for mpremote (fakeboard)."""
