"""The only package that imports libvirt. Everything else receives values or a connection."""
