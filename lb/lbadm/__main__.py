"""python -m lb.lbadm: the same as the lbadm command."""

import sys

from lb.lbadm.run import main

sys.exit(main())
