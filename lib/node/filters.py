"""Streaming filters for sensor readings; pure Python, same results on CPython and MicroPython."""


class MovingAverage:
    """Mean of the last `window` samples, O(1) per sample.

    Samples are integers (the climate task feeds tenths of a unit), so the running sum is exact:
    no floating-point drift however long the node runs, and no heap use for small ints.
    """

    def __init__(self, window):
        if window < 1:
            raise ValueError("window must be >= 1")
        self._ring = [0] * window
        self._next = 0
        self._count = 0
        self._sum = 0

    def push(self, sample):
        ring = self._ring
        if self._count == len(ring):
            self._sum -= ring[self._next]
        else:
            self._count += 1
        ring[self._next] = sample
        self._sum += sample
        self._next = (self._next + 1) % len(ring)

    def __len__(self):
        return self._count

    def mean(self):
        """The mean of the samples held; ValueError when there are none yet."""
        if not self._count:
            raise ValueError("no samples")
        return self._sum / self._count
