import sys

from esper_tui.cli import main

sys.exit(main())
