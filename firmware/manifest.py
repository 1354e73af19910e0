# Custom MicroPython firmware for ESP32 / ESP32-S3 with the node's libraries frozen in: lib/node
# and lib/umqtt become bytecode in flash (no RAM for their code, nothing to import from files).
# boot.py, main.py, config.json, secrets.json and the CA stay on the filesystem, so settings and
# the entry points can still change with `make deploy`; tools/deploy.py sees the frozen
# packages and does not copy lib/node or lib/umqtt (a frozen package wins over /lib).
#
# Build, from a MicroPython checkout with ESP-IDF set up (docs/HARDWARE.md, "Frozen firmware"):
#   make -C ports/esp32 BOARD=ESP32_GENERIC    FROZEN_MANIFEST=<this repo>/firmware/manifest.py
#   make -C ports/esp32 BOARD=ESP32_GENERIC_S3 FROZEN_MANIFEST=<this repo>/firmware/manifest.py
# then flash ports/esp32/build-<BOARD>/firmware.bin with tools/flash.sh --firmware.
# Relative paths below resolve against this file's folder (MicroPython's manifest rules).

# include/package are defined by MicroPython's tools/manifestfile.py when it runs this file.
# ruff: noqa: F821
# Everything the stock firmware freezes (_boot.py, asyncio, the port's drivers, ...).
include("$(PORT_DIR)/boards/manifest.py")

# The app's package and the MQTT client, from the same sources `make bundle` compiles. Run
# `make lib` first: lib/umqtt comes from PyPI and is not in git. Only umqtt.simple: the node
# does not use umqtt.robust (docs/ARCHITECTURE.md), so it is not frozen either.
package("node", base_path="../lib")
package("umqtt", files=["__init__.py", "simple.py"], base_path="../lib")
