"""`mipart sim`: a simulated GPU host (and, in `engine`, a fake inference engine) for tests and demos."""
