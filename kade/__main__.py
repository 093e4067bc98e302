import sys

from kade.cli import main

sys.exit(main())
