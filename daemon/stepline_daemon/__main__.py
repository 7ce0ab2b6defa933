import sys

from stepline_daemon.main import main

sys.exit(main())
