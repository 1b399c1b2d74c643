"""The Helm chart deploys locked down: seccomp RuntimeDefault, no service-account token, a NetworkPolicy that
lets in only the metrics port and lets out only DNS and the services the connector needs; credentials from an
existing Secret."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
HELM = Path(os.environ.get("KDCDC_TOOLS", ROOT / ".tools" / "bin")) / "helm"


def _render(*args: str) -> dict[str, dict[str, Any]]:
    res = subprocess.run([str(HELM), "template", "cdc", str(ROOT / "deploy" / "helm" / "kingdee-cdc"), *args],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    return {d["kind"]: d for d in yaml.safe_load_all(res.stdout) if d}


def test_the_pod_runs_with_seccomp_and_without_a_service_account_token() -> None:
    spec = _render("--set", "secrets.existingSecret=vault-cdc")["Deployment"]["spec"]["template"]["spec"]
    assert spec["automountServiceAccountToken"] is False
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    container = spec["containers"][0]["securityContext"]
    assert container["readOnlyRootFilesystem"] is True and container["allowPrivilegeEscalation"] is False
    assert container["capabilities"] == {"drop": ["ALL"]}


def test_the_network_policy_admits_metrics_only_and_egress_to_the_needed_services() -> None:
    objects = _render("--set", "secrets.existingSecret=vault-cdc")
    policy = objects["NetworkPolicy"]["spec"]
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    assert [p["port"] for rule in policy["ingress"] for p in rule["ports"]] == ["metrics"]
    egress_ports = sorted({p["port"] for rule in policy["egress"] for p in rule["ports"]})
    assert egress_ports == [53, 443, 5432, 8081, 9092, 9093]
    assert policy["podSelector"]["matchLabels"] == \
        objects["Deployment"]["spec"]["selector"]["matchLabels"]
    narrowed = _render("--set", "secrets.existingSecret=vault-cdc", "--set-json",
                       'networkPolicy.metricsFrom=[{"namespaceSelector":{"matchLabels":{"team":"monitoring"}}}]')
    assert narrowed["NetworkPolicy"]["spec"]["ingress"][0]["from"] == [
        {"namespaceSelector": {"matchLabels": {"team": "monitoring"}}}]
    assert "NetworkPolicy" not in _render("--set", "secrets.existingSecret=x", "--set", "networkPolicy.enabled=false")


def test_credentials_can_come_from_an_existing_secret() -> None:
    objects = _render("--set", "secrets.existingSecret=vault-cdc")
    assert "Secret" not in objects  # the chart creates none
    volumes = objects["Deployment"]["spec"]["template"]["spec"]["volumes"]
    assert {"name": "secrets", "secret": {"secretName": "vault-cdc", "defaultMode": 0o400}} in volumes


def test_probes_wait_for_a_failing_check_and_the_pod_outlives_the_shutdown_grace() -> None:
    """A failing dependency check takes up to 2 s: a 1 s probe timeout would lose the reason. SIGTERM → exit within
    service.shutdown_grace_s, which must end before Kubernetes kills the pod."""
    from connector.config import ServiceSettings

    spec = _render("--set", "secrets.existingSecret=vault-cdc")["Deployment"]["spec"]["template"]["spec"]
    container = spec["containers"][0]
    assert container["readinessProbe"]["timeoutSeconds"] >= 3 and container["livenessProbe"]["timeoutSeconds"] >= 3
    assert spec["terminationGracePeriodSeconds"] > ServiceSettings.model_fields["shutdown_grace_s"].default
