"""Entry point of the packaged cal-agent.exe (PyInstaller, see cal-agent.spec).

``cal-agent.exe --service-host ...`` is how the Service Control Manager starts the service (the
command line `cal-agent service install` registers); anything else is the ordinary command line.
"""

import sys

from agent.service.windows import main

if __name__ == "__main__":
    sys.exit(main(sys.argv))
