"""Print what a program sees of the interpreter that runs it, then end as told: the warm commands of the tests
must see what a fresh `python` sees (test_warm_commands.py).

    python report_interpreter.py {exit N | raise | interrupt} [ARGS...]
"""

import atexit
import json
import os
import sys
import threading
import time

print(json.dumps({"argv": sys.argv, "path0": sys.path[0], "cwd": os.getcwd(), "name": __name__,
                  "env": os.environ.get("REPORT_THIS"), "main_file": sys.modules["__main__"].__file__}))
atexit.register(lambda: print("atexit ran", flush=True))
threading.Thread(target=lambda: (time.sleep(0.2), print("thread finished", flush=True))).start()
how = sys.argv[1]
if how == "exit":
    sys.exit(int(sys.argv[2]))
if how == "raise":
    raise ValueError("as told")
if how == "interrupt":
    raise KeyboardInterrupt
