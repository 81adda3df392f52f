"""Hardware: the probe, the board profiles and the tuner (DESIGN §6).

The probe is the only reader of procfs, sysfs, the device tree and vcgencmd. Arrives with issue 6.
"""
