"""Filesystem steps the update modules share (node.ota*, node.otaswap), and the update's file
list read from its stream (at boot, node.otafinish)."""

import os

from node.files import OTA_STREAM

_DIR = 0x4000


def exists(path):
    try:
        os.stat(path)
    except OSError:
        return False
    return True


def makedirs(path):
    """Create the folders of the file `path` that do not exist yet."""
    cut = path.find("/")
    while cut > 0:
        if not exists(path[:cut]):
            os.mkdir(path[:cut])
        cut = path.find("/", cut + 1)


def rmtree(path):
    if not exists(path):
        return
    for name, kind in [(e[0], e[1]) for e in os.ilistdir(path)]:
        if kind & _DIR:
            rmtree(path + "/" + name)
        else:
            os.remove(path + "/" + name)
    os.rmdir(path)


def entries(list_bytes):
    """(size, sha256 hex, path) for each line of the file list at the stream's start,
    `list_bytes` long; ValueError on a line that is not one."""
    with open(OTA_STREAM, "rb") as f:
        left = list_bytes
        while left > 0:
            line = f.readline()
            left -= len(line)
            try:
                parts = line.decode().rstrip("\n").split(" ")
            except UnicodeError:
                parts = ()
            if left < 0 or len(parts) != 3 or len(parts[1]) != 64:
                raise ValueError("not a line of a file list: %r" % line[:80])
            yield int(parts[0]), parts[1], parts[2]
