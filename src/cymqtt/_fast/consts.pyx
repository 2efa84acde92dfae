# cython: language_level=3
"""Protocol constants (packet types, property identifiers, reason codes) as Python IntEnums.

The declarations live in consts.pxd, which the other compiled modules cimport.
"""
