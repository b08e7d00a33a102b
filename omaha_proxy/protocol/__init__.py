"""The Omaha v3 protocol, sans-IO: the model, named codes, decode, encode, builders, versions.

Imports nothing else of omaha_proxy: every other layer builds on it.
"""
