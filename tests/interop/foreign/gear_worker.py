"""OpenStack's gear (its own protocol code): reverses each job's bytes;
background jobs ("bg-...") are also appended to a file."""

import sys

import gear

host, port, func, out = sys.argv[1:]
worker = gear.Worker("gear-worker")
worker.addServer(host, int(port))
worker.waitForServer()
worker.registerFunction(func)
while True:
    job = worker.getJob()
    arg = bytes(job.arguments)
    if arg.startswith(b"bg-"):
        with open(out, "ab") as f:
            f.write(arg + b"\n")
    job.sendWorkComplete(arg[::-1])
