"""The hardware's limits, each defined once: config validates against them, the tasks obey them.

Its own module, apart from node.config, so that the running tasks can use them after the config
code has left the heap (node.app unloads it before the node is built).
"""

# The fastest each sensor may be read (datasheets): reading faster returns stale data or fails.
DHT_MIN_INTERVAL_S = {"DHT11": 1, "DHT22": 2}
# The longest `identify` flicker a user may ask for (node.commands checks it, node.led plays it).
IDENTIFY_MAX_S = 60
# The most RAM the outbox may take on the board: its heap starts at 56 KB and grows into the
# internal RAM that Wi-Fi (40-50 KB), mbedTLS (35-40 KB) and I2S DMA (30-40 KB) also need.
OUTBOX_RAM_BYTES = 32768
