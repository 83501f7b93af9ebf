"""``python -m benchmarks [URL...] [options]`` runs ``coordactors bench``."""

import sys

from coordactors.bench import main

sys.exit(main(sys.argv[1:]))
