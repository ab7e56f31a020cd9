"""Helpers shared by the tests (real loopback servers, generated media, model folders)."""
