"""mitmproxy glue: one module per addon class, plus the shared helpers in :mod:`.common`.

Only this package imports mitmproxy; everything it calls lives in the plain library.
"""
