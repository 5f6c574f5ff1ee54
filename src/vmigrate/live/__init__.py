"""Live migration: samples of libvirt's job statistics, a pure policy, and the runner."""
