"""Loopback test doubles: Mosquitto with TLS and a subscriber (broker), a scripted MQTT server
for the faults Mosquitto cannot produce (fakebroker), an SNTP server (fakentp), and throwaway
certificates (pki)."""
