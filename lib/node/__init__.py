"""The sensor-to-MQTT node application (deployed to /lib/node on the board)."""

VERSION = "0.1.0"


def unload(*names):
    """Let node modules that are needed only now and then leave the heap until imported again.

    Their bytecode is heap on the board (a few KB each: node.config is 7 KB): the config code
    runs at boot and for a `set` command, discovery once per session. The caller must hold no
    reference to the module or to anything defined in it.
    """
    import sys

    for name in names:
        sys.modules.pop("node." + name, None)
        globals().pop(name, None)  # the package's attribute, set by `from node import name`
