"""Skills: intent to skill to reply, built-in operations skills, the FAQ (DESIGN §5).

Arrives with issue 3.
"""
