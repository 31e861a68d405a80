import sys

from mipart.sim.engine.server import main

sys.exit(main())
