"""The Kingdee sandbox in a process of its own, for ``bench/poster.py``.

In the benchmark process the sandbox's request handling (parsing and validating every voucher of a
BatchSave) would share the interpreter — and its lock — with the poster being measured. Here it gets its own:
``python -m bench.sandbox_proc '<json: seed, latency_ms>'`` prints one line ``{"url", "data_centre",
"app_id", "app_secret"}`` and then answers each line on stdin: ``count`` → the number of vouchers it holds,
``cpu`` → the CPU seconds it has used, ``stop`` (or end of input) → exits.
"""

from __future__ import annotations

import json
import sys
import threading
import time

from connector.sandbox import DEFAULT_CONFIG, SandboxConfig, SandboxServer


def main(argv: list[str]) -> int:
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
