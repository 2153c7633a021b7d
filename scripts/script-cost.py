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


def cycle_costs(r, acquire, release, pairs):
    lock, tag = "dlock:script-cost", "{dlock:script-cost}:dlock:"
    keys = [lock] + [tag + kind + ":" + lock
                     for kind in ("info", "fence", "queue", "queue-leases", "waiters")]
    r.delete(*keys)
    a, b = r.script_load(acquire), r.script_load(release)
    r.config_resetstat()
    before = r.info("cpu")
    for i in range(pairs):
        token = "%032x" % i
        granted = r.evalsha(a, 3, *keys[:3], token, "30000", "604800000", "host", "1", "")
        released = r.evalsha(b, 6, *keys, token, tag + "released:" + lock, "604800000", "0")
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


def main():
    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("--port", type=int, required=True)
    args.add_argument("--rounds", type=int, default=8)
    args.add_argument("--pairs", type=int, default=3000)
    opts = args.parse_args()
    r = redis.Redis(port=opts.port)
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
