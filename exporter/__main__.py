"""``python -m exporter`` is ``sni-exporter``."""

import sys

from exporter.cli import main

sys.exit(main())
