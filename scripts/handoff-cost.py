#!/usr/bin/env python3
"""Server time of one contended hand-off: a release that queues a rider and hands the lock on.

Replays the steady state of `dlock bench --workload contended` / the peer bench's W2 with
riders (see crates/dlock/src/engine/riders.rs): the holder's release, as dlock composes it
(crates/dlock/src/scripts.rs), queues one rider of its client and hands the lock to the head of
the queue, which then releases in turn. Reports the script's execution time per call (INFO
commandstats) and the nested commands it ran per call, against a redis-server you started
(never one holding data: it writes keys under dlock:handoff-cost and resets its statistics).
Needs redis-py (the peer bench's venv has it: ../shared/peer-bench/peers/py/.venv/bin/python).

    python3 scripts/handoff-cost.py --port 7401 [--calls 5000] [--queued 3] [--release FILE]

--release runs another release script (a trimmed variant, say) in place of dlock's own; compare
alternated runs, as this VM's timings drift by a few µs between runs.
"""
import argparse
import pathlib

import redis

SCRIPTS = pathlib.Path(__file__).resolve().parent.parent / "crates/dlock/src/scripts"


def composed(*names):
    return "".join((SCRIPTS / name).read_text() for name in names)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--queued", type=int, default=3, help="waiters queued behind the holder")
    parser.add_argument("--release", type=pathlib.Path, help="a release script to run instead")
    args = parser.parse_args()

    release_src = (args.release.read_text() if args.release else
                   composed("release_lean.lua", "grant.lua", "handoff.lua", "release.lua"))
    acquire_src = composed("grant.lua", "acquire_free.lua")
    r = redis.Redis(port=args.port)
    lock, tag = "dlock:handoff-cost", "{dlock:handoff-cost}:dlock:"
    keys = [lock] + [tag + kind + ":" + lock
                     for kind in ("info", "fence", "queue", "queue-leases", "waiters")]
    channel, inbox = tag + "released:" + lock, "{inbox}:dlock:released:0123456789abcdef"
    r.delete(*keys)
    acquire, release = r.script_load(acquire_src), r.script_load(release_src)
    issued = 0

    def token():
        nonlocal issued
        issued += 1
        return "%032x" % (issued * 7919)

    def release_riding(holder, riders):
        # token, wake-up channel, fencing counter retention, not quiet; the client's inbox,
        # host and pid; then per rider its token, waiter lease ms, claim lease ms and label.
        values = [holder, channel, 604800000, "0", inbox, "bench-host", 4242]
        for rider in riders:
            values += [rider, 6000, 1000, ""]
        return r.evalsha(release, len(keys), *keys, *values)

    r.evalsha(acquire, 3, *keys[:3], token(), 10000, 604800000, "bench-host", 4242, "")
    # The first release queues the waiters and hands the lock to the first of them.
    release_riding(r.get(lock).decode(), [token() for _ in range(args.queued + 1)])
    r.config_resetstat()
    for _ in range(args.calls):
        release_riding(r.get(lock).decode(), [token()])
    stats = r.info("commandstats")
    script = stats.pop("cmdstat_evalsha")
    nested = {name[len("cmdstat_"):]: s["calls"] / args.calls for name, s in stats.items()
              if name.startswith("cmdstat_") and name != "cmdstat_config|resetstat"}
    nested["get"] = nested.get("get", 0) - 1  # the replay's own read of the holder per call
    print("release with a rider, %d queued: %.1f µs of script time per call (%d calls)"
          % (args.queued, script["usec_per_call"], script["calls"]))
    print("nested commands per call: %.1f (%s)" % (
        sum(nested.values()),
        ", ".join("%s %.1f" % item for item in sorted(nested.items(), key=lambda i: -i[1]))))
    r.delete(*keys)


if __name__ == "__main__":
    main()
