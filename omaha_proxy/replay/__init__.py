"""Recordings and replay: the recording format, scrubbing, builders from the log, meaning-based
matchers, the player, the replay and record servers, and the pytest plugin.
"""
