"""How ``rollbackd run`` finds its way to the Kubernetes API (or decides not to act)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rollbackd.config.settings import KubernetesSettings, Settings
from rollbackd.daemon.main import kube_client_for
from rollbackd.kube.errors import KubeConfigError


def _kubeconfig(path: Path) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": "http://127.0.0.1:1"}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        ),
        encoding="utf-8",
    )
    return path


def settings(**kube: object) -> Settings:
    return Settings(kubernetes=KubernetesSettings(**kube))


def test_disabled_never_touches_the_cluster(tmp_path: Path) -> None:
    config = _kubeconfig(tmp_path / "config")
    assert kube_client_for(settings(enabled=False), environ={"KUBECONFIG": str(config)}) is None


def test_auto_finds_a_kubeconfig_from_the_environment_or_home(tmp_path: Path) -> None:
    config = _kubeconfig(tmp_path / "config")
    client = kube_client_for(settings(), environ={"KUBECONFIG": str(config)})
    assert client is not None
    assert str(config) in client.describe()
    (tmp_path / ".kube").mkdir()
    _kubeconfig(tmp_path / ".kube" / "config")
    assert kube_client_for(settings(), environ={"HOME": str(tmp_path)}) is not None


def test_auto_without_any_configuration_decides_only(tmp_path: Path) -> None:
    assert kube_client_for(settings(), environ={"HOME": str(tmp_path)}) is None


def test_required_without_any_configuration_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(KubeConfigError, match="no kubeconfig"):
        kube_client_for(settings(enabled=True), environ={"HOME": str(tmp_path)})


def test_run_exits_2_with_the_reason_when_kubernetes_is_required_but_missing(tmp_path: Path) -> None:
    config = tmp_path / "rollbackd.yaml"
    config.write_text("kubernetes:\n  enabled: true\nhttp:\n  port: 0\n", encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, "-m", "rollbackd", "run", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert proc.returncode == 2
    assert "kubernetes.enabled is true" in proc.stderr


def test_a_daemon_that_only_decides_does_not_load_the_kubernetes_client() -> None:
    """The client package holds every Kubernetes API model (tens of MiB): it is imported when a
    client is entered, so a daemon without Kubernetes access, ``replay`` and ``check-config`` do
    without it."""
    code = (
        "import sys\n"
        "import rollbackd.cli, rollbackd.daemon.main, rollbackd.daemon.app, rollbackd.kube\n"
        "print('kubernetes_asyncio' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
