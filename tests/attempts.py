"""A script that tries one thing as whoever runs it and prints what happened: `done`, the
environment it read, or the name of the error. Tests run it as another uid (setpriv) to show
what the kernel lets that uid do: `python3 -c SCRIPT WHAT TARGET`."""

SCRIPT = """
import os, socket, sys
what, target = sys.argv[1], sys.argv[2]
try:
    if what == "bind":
        socket.socket(socket.AF_UNIX).bind(target)
    elif what == "connect":
        socket.socket(socket.AF_UNIX).connect(target)
    elif what == "mkdir":
        os.mkdir(target)
    elif what == "environ":
        print(open("/proc/%s/environ" % target, "rb").read().decode(errors="replace"))
    elif what == "kill":
        os.kill(int(target), 0)
except OSError as exc:
    print(type(exc).__name__)
else:
    print("done")
"""
