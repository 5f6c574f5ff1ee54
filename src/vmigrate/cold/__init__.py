"""Cold migration: stop (or save), copy disks through libvirt streams, define, start, verify."""
