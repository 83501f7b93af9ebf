"""coordactors: distributed coordination as actors.

Group membership with capabilities, leader election, fenced locks and pushed
events over many backends, served by a pykka actor per connection and kept
alive by a supervisor.
"""

import logging

from coordactors.characteristics import Characteristics
from coordactors.coordinator import Coordinator, connect
from coordactors.messages import Lease

__all__ = ["Characteristics", "Coordinator", "Lease", "connect"]

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())
