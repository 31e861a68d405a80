"""`mipart sim`: a simulated GPU host (driver, sysfs tree and its own GPU backend) and, in
`engine`, a fake inference engine, for tests and demos."""
