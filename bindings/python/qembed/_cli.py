"""The `qembed` command of an installed wheel: runs the qembed binary that
ships inside the package (qembed/bin/qembed)."""

import os
import sys


def main():
    exe = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bin", "qembed")
    if not os.path.isfile(exe):
        sys.stderr.write("qembed: the command is not part of this installation (%s is missing); "
                         "in a checkout, run `make cli` and use .build/release/qembed-cli\n" % exe)
        return 1
    os.execv(exe, [exe] + sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
