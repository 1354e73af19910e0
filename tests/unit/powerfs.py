"""A filesystem in RAM that loses power on cue, for node.journal's tests (MicroPython or CPython).

    fs = PowerFs()                  # files: {path: bytearray}; folders: a set of paths
    fs.cut(7, 12)                   # the 7th change is cut after 12 bytes; later ones fail
    ... run the node's code until it raises PowerCut ...
    fs.power_on()                   # the next boot: what reached the flash is all there is

Every change of the flash is one step, logged in `fs.log` as (what, bytes written): creating a
file, a write(), remove, rename, mkdir, rmdir. A cut at step k keeps the first `keep` bytes of a
write (0 <= keep < its length: torn), or does not happen (keep 0) for any other step; every
later step raises PowerCut without effect. `durable="write"` is the simulator's host filesystem
(each write() lands at once); `durable="close"` is LittleFS: a file's appends land together,
in one step, when it is closed, or not at all. `fs.fail = errno` makes every change raise
OSError(errno) instead (a full or broken flash); `fs.unreadable = True` every open for reading
raise OSError(EIO).
"""

import errno

ENOTEMPTY = 39  # Linux's; MicroPython's errno module names only a few
ENOSPC = 28


class PowerCut(Exception):
    """The power went: the code that was running is gone."""


class PowerFs:
    def __init__(self, durable="write"):
        self.files = {}
        self.dirs = set()
        self.durable = durable
        self.steps = 0  # changes made so far (since power on)
        self.log = []  # (what, bytes) of every change begun
        self.writes = 0  # write() calls made
        self.closes = 0  # files opened for appending, closed (a LittleFS commit each)
        self.bytes = 0  # bytes written
        self.fail = 0
        self.unreadable = False
        self._cut_at = 0
        self._keep = 0
        self._dead = False

    def cut(self, step, keep=0):
        self._cut_at, self._keep = step, keep

    def power_on(self):
        self._cut_at = self.steps = 0
        self._dead = False

    def _change(self, what, data=b""):
        """Count one step: None to go ahead, or the bytes to keep of the one that is cut."""
        if self._dead:
            raise PowerCut("power is off")
        if self.fail:
            raise OSError(self.fail)
        self.steps += 1
        self.log.append((what, data))
        if self.steps == self._cut_at:
            self._dead = True
            return self._keep
        return None

    def _cut_now(self):
        raise PowerCut("power cut at step %d" % self.steps)

    def _folder_of(self, path):
        cut = path.rfind("/")
        return path[:cut] if cut > 0 else ""

    # --- the calls node.journal makes --------------------------------------------------------
    def open(self, path, mode):
        if self._dead:
            raise PowerCut("power is off")
        if "r" in mode:
            if self.unreadable:
                raise OSError(errno.EIO)
            if path not in self.files:
                raise OSError(errno.ENOENT)
            return _Reader(self.files[path])
        folder = self._folder_of(path)
        if folder and folder not in self.dirs:
            raise OSError(errno.ENOENT)
        if "a" not in mode:
            raise ValueError("the journal only appends: " + mode)
        if path not in self.files:
            # Made at once, empty, as LittleFS does when it opens a new file.
            if self._change("create") == 0:
                self._cut_now()
            self.files[path] = bytearray()
        return _Appender(self, path)

    def listdir(self, path):
        if path not in self.dirs:
            raise OSError(errno.ENOENT)
        prefix = path + "/"
        names = [p[len(prefix):] for p in self.files if p.startswith(prefix)]
        names += [d[len(prefix):] for d in self.dirs if d.startswith(prefix)]
        return [n for n in names if "/" not in n]

    def mkdir(self, path):
        if path in self.dirs or path in self.files:
            raise OSError(errno.EEXIST)
        if self._change("mkdir") == 0:
            self._cut_now()
        self.dirs.add(path)

    def rmdir(self, path):
        if path not in self.dirs:
            raise OSError(errno.ENOENT)
        if self.listdir(path):
            raise OSError(ENOTEMPTY)
        if self._change("rmdir") == 0:
            self._cut_now()
        self.dirs.discard(path)

    def remove(self, path):
        if path not in self.files:
            raise OSError(errno.ENOENT)
        if self._change("remove") == 0:
            self._cut_now()
        del self.files[path]

    def rename(self, old, new):
        if new in self.files or new in self.dirs:
            raise OSError(errno.EEXIST)
        moved = [p for p in self.files if p == old or p.startswith(old + "/")]
        if old not in self.dirs and old not in self.files:
            raise OSError(errno.ENOENT)
        if self._change("rename") == 0:
            self._cut_now()
        for p in moved:
            self.files[new + p[len(old):]] = self.files.pop(p)
        if old in self.dirs:
            self.dirs.discard(old)
            self.dirs.add(new)


class _Reader:
    def __init__(self, data):
        self._data = data
        self._at = 0

    def seek(self, at):
        self._at = at

    def readinto(self, buf):
        chunk = self._data[self._at:self._at + len(buf)]
        buf[:len(chunk)] = chunk
        self._at += len(chunk)
        return len(chunk)

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class _Appender:
    def __init__(self, fs, path):
        self._fs = fs
        self._path = path
        self._pending = bytearray()  # durable="close": written, not committed yet

    def write(self, data):
        fs = self._fs
        data = bytes(data)
        if fs.durable == "close":
            if fs._dead:
                raise PowerCut("power is off")
            self._pending += data  # in the file's cache: a cut before close loses it all
        else:
            keep = fs._change("write", data)
            fs.files[self._path] += data if keep is None else data[:keep]
            if keep is not None:
                fs._cut_now()
        fs.writes += 1
        fs.bytes += len(data)
        return len(data)

    def close(self):
        fs = self._fs
        if fs.durable == "close" and self._pending:
            if fs._change("commit", self._pending) is not None:
                fs._cut_now()  # the commit did not happen: the file is as it was
            fs.files[self._path] += self._pending
            self._pending = bytearray()
        fs.closes += 1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if exc[0] is None:
            self.close()
