# boot.py: runs first on every boot. Count the boot, nothing more: an error here must never
# keep main.py or the REPL from running.
try:
    from node import bootcount

    print("boot.py: boot", bootcount.increment("boot.json"))
except (ImportError, OSError) as e:  # lib/ missing mid-deploy, or flash full: main.py decides
    print("boot.py: cannot count boots:", e)
