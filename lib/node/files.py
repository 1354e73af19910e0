"""The files the node keeps in the board's flash, named once (boot.py spells out its three)."""

CONFIG_PATH = "config.json"
SECRETS_PATH = "secrets.json"
SETTINGS_PATH = "settings.json"  # settings changed by command (node.settings)
BOOT_PATH = "boot.json"  # the boot count and the boot-loop count (node.bootcount)
CLOCK_PATH = "clock.json"  # the last time seen: the clock's floor after a power-on
# tools/deploy.py creates this before copying and removes it when every file is in place.
DEPLOY_MARKER = "deploying"
# An update over MQTT being swapped in, on trial or undone (node.otaswap); boot.py looks for it.
OTA_STATE = "ota.json"
# An update's files: the manifest message accepted and the stream as it arrives (the file
# list, then the files); node.otaswap names those of the swap in the same folder. (Names of
# more than 10 characters: shorter ones are interned, and take RAM for good.)
OTA_DIR = "ota"
OTA_HEAD = "ota/manifest"
OTA_STREAM = "ota/stream.bin"
