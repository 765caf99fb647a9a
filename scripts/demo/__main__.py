"""Entry point: ``python -m demo`` (with ``scripts/`` on the path; scripts/demo.sh does that)."""

import sys
import warnings

# python-ovs imports eventlet, which warns on import; the demo does not use it.
warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")

from demo.main import main

sys.exit(main())
