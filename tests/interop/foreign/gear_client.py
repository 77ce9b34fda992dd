"""OpenStack's gear: ten foreground jobs (results printed in hex), then five
background jobs."""

import sys
import time

import gear

host, port, func = sys.argv[1:]
client = gear.Client("gear-client")
client.addServer(host, int(port))
client.waitForServer()
for i in range(10):
    job = gear.Job(func.encode(), b"job-%d\x00x" % i)
    client.submitJob(job, timeout=20)
    deadline = time.monotonic() + 20
    while not job.complete and time.monotonic() < deadline:
        time.sleep(0.005)
    print(b"".join(job.data).hex() if job.complete and not job.failure else "FAIL", flush=True)
for i in range(5):
    client.submitJob(gear.Job(func.encode(), b"bg-%d" % i), background=True, timeout=20)
client.shutdown()
