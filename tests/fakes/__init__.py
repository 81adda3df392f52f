"""Test doubles: a fake clock, fake platform servers, recorded payloads."""
