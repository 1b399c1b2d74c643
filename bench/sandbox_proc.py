"""The Kingdee sandbox in a process of its own, for ``bench/poster.py``.

In the benchmark process the sandbox's request handling (parsing and validating every voucher of a
BatchSave) would share the interpreter — and its lock — with the poster being measured. Here it gets its own:
``python -m bench.sandbox_proc '<json: seed, latency_ms>'`` prints one line ``{"url", "data_centre",
"app_id", "app_secret"}`` and then answers each line on stdin: ``count`` → the number of vouchers it holds,
``cpu`` → the CPU seconds it has used, ``stop`` (or end of input) → exits.

Python's full (oldest-generation) garbage collections are kept out of this process: the sandbox keeps every
voucher it stores — Kingdee's database — as Python objects, and each full collection walks all of them again
(~100 ms per collection at 10,000 vouchers, ~40 % of the sandbox's CPU in a run of the poster bench). That cost
belongs to no real Kingdee, yet on a bench host the sandbox shares the cores with the poster it measures. The
young generations are still collected; the 20 ms latency per call is untouched.
"""

from __future__ import annotations

import gc
import json
import sys
import threading
import time

from connector.sandbox import DEFAULT_CONFIG, SandboxConfig, SandboxServer


def main(argv: list[str]) -> int:
    gen0, gen1, _ = gc.get_threshold()
    gc.set_threshold(gen0, gen1, 1_000_000_000)  # no full collection in a bench run (see above)
    spec = json.loads(argv[0]) if argv else {}
    cfg = SandboxConfig.load(DEFAULT_CONFIG)
    cfg.faults.update({"latency_ms": float(spec.get("latency_ms", 0.0))})
    server = SandboxServer(("127.0.0.1", 0), cfg, spec.get("seed"))
    threading.Thread(target=server.serve_forever, name="kingdee-sandbox", daemon=True).start()
    app_id = next(iter(cfg.apps))
    print(json.dumps({"url": server.url, "data_centre": cfg.data_centre, "app_id": app_id,
                      "app_secret": cfg.apps[app_id]["secret"]}), flush=True)
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "count":
            print(len(server.state.vouchers), flush=True)
        elif cmd == "cpu":
            print(time.process_time(), flush=True)
        elif cmd == "stop":
            break
    server.shutdown()
    server.server_close()
    server.state.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
