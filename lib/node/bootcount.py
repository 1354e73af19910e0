"""The boot counter kept in flash: boot.py counts, the app reads it for `boot` in payloads."""

import json


def read(path):
    """The current boot number; 0 when the file is missing or damaged."""
    try:
        with open(path) as f:
            value = json.load(f)["boot"]
    except (OSError, ValueError, KeyError, TypeError):
        return 0
    return value if isinstance(value, int) and value >= 0 else 0


def increment(path):
    """Count this boot and return its number (a damaged file restarts the count at 1)."""
    boot = read(path) + 1
    with open(path, "w") as f:
        json.dump({"boot": boot}, f)
    return boot
