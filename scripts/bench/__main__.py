"""``python -m bench``: run the benchmark groups and print the table."""

import sys
import warnings

# python-ovs imports eventlet, which warns on import; nothing here uses it.
warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")

from bench.main import main

sys.exit(main())
