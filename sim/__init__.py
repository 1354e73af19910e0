"""The simulator: board/ runs on the MicroPython unix port in place of the ESP32; host/ and net/
are the CPython side (the node process and `make sim`; the loopback broker, fakes and certificates).
"""
