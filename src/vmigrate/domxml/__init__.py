"""Pure readers of libvirt XML (domains, capabilities)."""
