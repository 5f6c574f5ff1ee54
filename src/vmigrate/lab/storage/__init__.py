"""The lab's shared storage servers (iSCSI, Ceph RBD, NFS), run from user space on loopback
addresses the lab owns, and the libvirt pools and secrets every lab host gets for them."""
