"""Status LEDs: supervisor state shown as a blink pattern (DESIGN §4).

`patterns` is pure; `leds` is the only module that drives hardware. Importing has no side effects.
"""
