"""Fleet operations: many hosts at once (an inventory, evacuating a host)."""
