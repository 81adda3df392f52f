"""Chat: events, the Adapter protocol, shared policy and one adapter module per platform.

Policy covers pairing, allowlists, dedupe and rate limits; `adapters/` holds one module per
platform (DESIGN §7). Arrives with issue 4.
"""
