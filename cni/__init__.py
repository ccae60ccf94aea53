"""The flannelish CNI plugin (imported as flannelish.cni).

Only the standard library may be imported at module level here and in
``main``: a container runtime starts a fresh process for every call.
"""
