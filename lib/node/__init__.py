"""The sensor-to-MQTT node application (deployed to /lib/node on the board)."""

VERSION = "0.1.0"
