"""flannelish: Flannel-style overlay networking for containers.

Kept free of imports beyond the standard library: the CNI plugin's entry
point imports this package on every invocation and must start fast.
"""

__version__ = "0.1.0"
