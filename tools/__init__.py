"""What a user runs against real hardware, and analysis: bundle, deploy, fetch of umqtt, plot,
bench; flash.sh. The Makefile runs the Python ones as `python -m tools.<name>`."""
