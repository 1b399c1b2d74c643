"""`config check --connect` tries every service the configuration names and says which one fails."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from connector.sandbox import DEFAULT_CONFIG, SandboxConfig, start_sandbox

ROOT = Path(__file__).resolve().parents[2]


def _check(tmp_path: Path, config: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "config.yaml").write_text(config, "utf-8")
    exe = Path(sys.executable).with_name("kingdee-cdc")
    return subprocess.run([str(exe), "config", "check", "--connect", "--timeout", "5", "-c", "config.yaml"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)


def test_config_check_connect_names_the_service_that_cannot_be_reached(
        kafka_bootstrap: str, pg_dsn: str, topic_factory: Callable[..., str], tmp_path: Path) -> None:
    topic = topic_factory("cfgcheck")
    sb = start_sandbox(SandboxConfig.load(DEFAULT_CONFIG))
    try:
        cfg = SandboxConfig.load(DEFAULT_CONFIG)
        app_id = next(iter(cfg.apps))
        config = (f"kafka: {{bootstrap_servers: '{kafka_bootstrap}', topics: [{topic}]}}\n"
                  f"journal: {{dsn: '{pg_dsn}'}}\n"
                  f"mapping: {{rules_dir: '{ROOT / 'rules'}'}}\n"
                  f"kingdee: {{server_url: '{sb.url}', acct_id: '{cfg.data_centre}', username: integration, "
                  f"app_id: '{app_id}', app_secret: '{cfg.apps[app_id]['secret']}'}}\n")
        good = _check(tmp_path, config)
        assert good.returncode == 0, good.stdout + good.stderr
        lines = {line.split()[0]: line for line in good.stdout.splitlines() if line and not line.startswith(" ")}
        assert all(" ok " in lines[name] for name in ("rules", "postgresql", "kafka", "kingdee")), good.stdout
        assert "configuration OK" in good.stdout
        # the same with a topic that does not exist and PostgreSQL on a port where nothing listens
        broken = config.replace(f"topics: [{topic}]", "topics: [no-such-topic-here]").replace(
            pg_dsn, "postgresql://postgres@127.0.0.1:1/postgres")
        bad = _check(tmp_path, broken)
        assert bad.returncode == 1
        out = {line.split()[0]: line for line in bad.stdout.splitlines() if line.strip()}
        assert "FAIL" in out["postgresql"] and "Connection refused" in out["postgresql"]
        assert "FAIL" in out["kafka"] and "no-such-topic-here" in out["kafka"]
        assert " ok " in out["rules"] and " ok " in out["kingdee"]
    finally:
        sb.stop()
