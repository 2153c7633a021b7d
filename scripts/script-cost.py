#!/usr/bin/env python3
"""Server time of dlock's uncontended lock cycle, script by script, against the floor's.

Runs acquire + release pairs (the scripts as dlock composes them, see crates/dlock/src/
scripts.rs) and the floor's SET NX PX + compare-and-delete as scripts, alternated, against a
redis-server you started (never one holding data: it writes keys under dlock:script-cost and
resets its statistics). Reports, per cycle, the scripts' execution time (INFO commandstats)
and the server's whole CPU time (INFO cpu, networking included), and the time of one grant
(fencing counter, lock, holder info) in a loop inside a script. Needs redis-py (the peer
bench's venv has it: ../shared/peer-bench/peers/py/.venv/bin/python).

    python3 scripts/script-cost.py --port 7401 [--rounds 8] [--pairs 3000]

With --handoff, it replays one contended hand-off instead, the steady state of W2 with riders
(crates/dlock/src/engine/riders.rs): the holder's release queues one rider of its client and
hands the lock to the head of the queue, which then releases in turn. It reports that
release's script time per call and the nested commands it ran per call; --release FILE runs
another release script (a trimmed variant, say) in its place. Compare alternated runs: this
VM's timings drift by a few µs between runs.

    python3 scripts/script-cost.py --port 7401 --handoff [--calls 5000] [--queued 3] [--release FILE]
"""
import argparse
import pathlib
import statistics
import time

import redis

SCRIPTS = pathlib.Path(__file__).resolve().parent.parent / "crates/dlock/src/scripts"


def composed(*names):
    return "".join((SCRIPTS / name).read_text() for name in names)


VARIANTS = {
    "dlock": (
        composed("grant.lua", "acquire_free.lua"),
        composed("release_lean.lua", "grant.lua", "handoff.lua", "release.lua"),
    ),
    "floor": (
        "return {1, redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2])}",
        "if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) "
        "return {1} end return {0}",
    ),
}


LOCK, TAG = "dlock:script-cost", "{dlock:script-cost}:dlock:"
# A lock's six keys, in the order its scripts take them (crates/dlock/src/key.rs).
KEYS = [LOCK] + [TAG + kind + ":" + LOCK
                 for kind in ("info", "fence", "queue", "queue-leases", "waiters")]
CHANNEL = TAG + "released:" + LOCK


def cycle_costs(r, acquire, release, pairs):
    r.delete(*KEYS)
    a, b = r.script_load(acquire), r.script_load(release)
    r.config_resetstat()
    before = r.info("cpu")
    for i in range(pairs):
        token = "%032x" % i
        granted = r.evalsha(a, 3, *KEYS[:3], token, "30000", "604800000", "host", "1", "")
        released = r.evalsha(b, 6, *KEYS, token, CHANNEL, "604800000", "0")
        assert granted[0] == 1 and released[0] == 1, (granted, released)
    after = r.info("cpu")
    script_us = r.info("commandstats")["cmdstat_evalsha"]["usec"] / pairs
    cpu = sum(after[k] - before[k] for k in ("used_cpu_user", "used_cpu_sys"))
    return script_us, cpu * 1e6 / pairs


def grant_cost(r, grants=2000):
    """Server time of one grant (grant.lua's `grant`: clock, fencing counter, lock, holder
    info) in a loop inside one script, without the per-call overhead."""
    loop = composed("grant.lua") + """
for _ = 1, tonumber(ARGV[1]) do
  grant(KEYS[1], KEYS[2], KEYS[3], 'token', 30000, 600000, 'host', '1', '', server_now_us())
end
return 0"""
    keys = ["dlock:script-cost:grant", "dlock:script-cost:grant:info",
            "dlock:script-cost:grant:fence"]
    sha = r.script_load(loop)
    r.config_resetstat()
    r.evalsha(sha, 3, *keys, grants)
    cost = r.info("commandstats")["cmdstat_evalsha"]["usec"] / grants
    r.delete(*keys)
    return cost


def handoff_cost(r, release_src, calls, queued):
    """Replays `calls` contended hand-offs with `queued` waiters behind the holder (see the
    module doc); returns the release's script µs per call and its nested commands per call."""
    inbox = "{inbox}:dlock:released:0123456789abcdef"
    acquire_src, _ = VARIANTS["dlock"]
    r.delete(*KEYS)
    acquire, release = r.script_load(acquire_src), r.script_load(release_src)
    issued = 0

    def token():
        nonlocal issued
        issued += 1
        return "%032x" % (issued * 7919)

    def release_riding(riders):
        # The holder's token, wake-up channel, fencing counter retention, not quiet; the
        # client's inbox, host and pid; then per rider its token, waiter lease ms, claim lease
        # ms and label.
        values = [r.get(LOCK).decode(), CHANNEL, 604800000, "0", inbox, "host", "1"]
        for rider in riders:
            values += [rider, 6000, 1000, ""]
        r.evalsha(release, len(KEYS), *KEYS, *values)

    r.evalsha(acquire, 3, *KEYS[:3], token(), 10000, 604800000, "host", "1", "")
    # The first release queues the waiters and hands the lock to the first of them.
    release_riding([token() for _ in range(queued + 1)])
    r.config_resetstat()
    for _ in range(calls):
        release_riding([token()])
    stats = r.info("commandstats")
    script = stats.pop("cmdstat_evalsha")
    nested = {name[len("cmdstat_"):]: s["calls"] / calls for name, s in stats.items()
              if name != "cmdstat_config|resetstat"}
    nested["get"] = nested.get("get", 0) - 1  # the replay's own read of the holder per call
    r.delete(*KEYS)
    return script["usec_per_call"], nested


def report_handoff(r, opts):
    release = (opts.release.read_text() if opts.release else VARIANTS["dlock"][1])
    script_us, nested = handoff_cost(r, release, opts.calls, opts.queued)
    print("release with a rider, %d queued: %.1f µs of script time per call (%d calls)"
          % (opts.queued, script_us, opts.calls))
    print("nested commands per call: %.1f (%s)" % (
        sum(nested.values()),
        ", ".join("%s %.1f" % item for item in sorted(nested.items(), key=lambda i: -i[1]))))


def main():
    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("--port", type=int, required=True)
    args.add_argument("--rounds", type=int, default=8)
    args.add_argument("--pairs", type=int, default=3000)
    args.add_argument("--handoff", action="store_true", help="replay a contended hand-off")
    args.add_argument("--calls", type=int, default=5000)
    args.add_argument("--queued", type=int, default=3, help="waiters queued behind the holder")
    args.add_argument("--release", type=pathlib.Path, help="a release script to run instead")
    opts = args.parse_args()
    r = redis.Redis(port=opts.port)
    if opts.handoff:
        report_handoff(r, opts)
        return
    results = {name: [] for name in VARIANTS}
    grants = []
    for _ in range(opts.rounds):
        for name, (acquire, release) in VARIANTS.items():
            results[name].append(cycle_costs(r, acquire, release, opts.pairs))
            time.sleep(0.1)
        grants.append(grant_cost(r))
    print("variant   script µs/cycle (median)   server CPU µs/cycle (median)")
    for name, runs in results.items():
        print("%-9s %26.1f %30.1f" % (name, statistics.median(s for s, _ in runs),
                                       statistics.median(c for _, c in runs)))
    print("one grant in a loop inside a script: %.2f µs (median)" % statistics.median(grants))


if __name__ == "__main__":
    main()
