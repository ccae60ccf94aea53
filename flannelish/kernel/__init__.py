"""The kernel layer, one module per concern.

* ``netlink``: the records and the one :class:`Netlink` interface the daemon
  and the CNI plugin both use;
* ``rawnetlink``: its one runtime implementation, over
* ``rtnl``: the rtnetlink wire format and socket (standard library only);
* ``netns``: entering a network namespace per thread, and coming back;
* ``monitor``: kernel change notifications for the daemon's reconciler;
* ``resources``: the kinds of kernel objects the reconciler owns.

The in-memory fake is :mod:`flannelish.testing.fake_kernel`.
"""
