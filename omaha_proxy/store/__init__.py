"""The Omaha log: schema and migrations, writing and reading exchanges, redaction, Nebraska's
instance states, and the log writer process.
"""
