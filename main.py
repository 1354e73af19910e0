"""The sensor-to-MQTT node. The app lives in lib/node/app.py, compiled into the bundle, so the
board does not compile it at every boot."""

from node import app

app.start()
