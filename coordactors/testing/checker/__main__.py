"""``python -m coordactors.testing.checker URL ...`` (the same as ``coordactors check``)."""

import sys

from coordactors.testing.checker import main

sys.exit(main())
