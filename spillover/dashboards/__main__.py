import sys

from spillover.dashboards.generate import main

sys.exit(main())
