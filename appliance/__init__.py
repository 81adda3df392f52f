"""The device side of the Raspberry Pi appliance: supervisor, services, config.

Importing this package has no side effects: no threads, no file reads, no environment snapshots.
"""

__version__ = "0.1.0"
