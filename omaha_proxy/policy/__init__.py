"""Control: option specs parsed into frozen values, and pure ``decide_*`` functions over documents.

The policy is given data (offers seen, grants made) and never reads a store itself.
"""
