import sys

from visionthink.cli import main

sys.exit(main())
