"""Hardware: the probe, the board profiles and the tuner (DESIGN §6).

`probe.py` is the only reader of procfs, sysfs, the device tree and vcgencmd; `machine.py`,
`throttling.py`, `library.py` and `tuner.py` are pure; `measure.py` times candidates on their
own interpreter; `saved.py` keeps profiles in the store; `service.py` is the `tuner` service.
"""
