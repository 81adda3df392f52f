"""Fleet over MQTT: topics, sans-I/O protocol, client service, updates and deltas.

DESIGN §9-§10. Arrives with issue 5 and later.
"""
