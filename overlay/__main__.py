import sys

from overlay.server.cli import main

sys.exit(main())
