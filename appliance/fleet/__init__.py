"""Fleet management over MQTT: topics, the sans-I/O protocol and the client service (DESIGN §9)."""
