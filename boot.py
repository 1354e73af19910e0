# boot.py: runs first on every boot. Count the boot, nothing more: an error here must never
# keep main.py or the REPL from running.
from node import bootcount

try:
    print("boot.py: boot", bootcount.increment("boot.json"))
except OSError as e:  # flash full or read-only: the app still runs, with boot 0
    print("boot.py: cannot count boots:", e)
