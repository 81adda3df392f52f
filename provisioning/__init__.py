"""The operator side: fleet CA, setup codes, enrollment, releases, deltas, fleet status.

Runs on the operator's machine, never on a device.
"""
