"""Persistent state: the store base (`sqlite`) that API keys and pairing both build on."""
