"""One HTTP base for Omaha servers and the servers built on it: serve-package, the payload
cache's file server, the offline bundle server.
"""
