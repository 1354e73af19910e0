"""Updates over MQTT, wired into a node given an `ota_key` (node.wiring): the two topics it
subscribes to, on <prefix>/<node>/ota/. Imported only for such a node, and kept: a node without
the key has none of an update's code or names in its heap.

node.otastate is loaded for a manifest (and node.otaoffer to check it), node.ota from then to
the end of the update; a chunk of no update under way is dropped, as the sender offers the
manifest again.
"""

from node import board


def attach(node, key):
    """Subscribe node.wiring.Node `node` to its update topics; `key` checks their manifests."""
    node.ota_key = key
    base = node.topics.ota
    # A retained manifest would be offered again at every connect: only fresh ones count.
    node.publisher.subscribe(base + "/manifest", lambda msg, retained: (
        retained or _offered(node, msg)))
    node.publisher.subscribe(base + "/chunk", lambda msg, retained: (
        node.ota is not None and not retained and node.ota.chunk(msg)))


def _offered(node, msg):
    from node import otastate  # which loads the rest of an update as it goes ahead

    otastate.offered(node, msg, board.reset)
