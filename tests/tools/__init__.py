"""The host tooling (bundle, deploy, flash, plot) against fakes: mpy-cross, a simulated serial
board, a fake esptool, recordings."""
