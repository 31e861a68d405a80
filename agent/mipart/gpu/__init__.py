"""The GPU side: partition rules, sysfs discovery and writes, driver reload, the simulator."""
