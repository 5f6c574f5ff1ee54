"""The benchmarks drive vmigrate's library directly, as the CLI does: with the lab plugged in
(hostA.. by name, the cluster `lab`, heartbeat gaps in move reports)."""

from vmigrate.lab.plugin import install

install()
