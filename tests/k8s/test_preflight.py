"""``vitpipe preflight`` against the session's real local Ray cluster."""

from __future__ import annotations

import subprocess
import sys

import pytest

from components.cli.preflight import _storage_read, format_report, run_preflight
from components.tracking.server import free_port

SERVE_OK = """
applications:
  - name: app
    route_prefix: /
    import_path: json:dumps
    deployments:
      - name: Model
        num_replicas: 1
"""


@pytest.fixture()
def gcs_address(ray_cluster) -> str:
    return ray_cluster.address_info["gcs_address"]



def test_healthy_cluster_passes_every_check(gcs_address, tmp_path):
    checks = run_preflight(gcs_address, str(tmp_path / "runs"), serve_config_text=SERVE_OK, timeout_s=60)
    report = format_report(gcs_address, checks)
    assert all(c.ok for c in checks), report
    names = [c.name for c in checks]
    assert names[0] == "connect" and "gpus" in names and "serve config" in names
    assert any(n.startswith("versions ") for n in names)
    assert any(n.startswith("storage write ") for n in names)
    assert any(n.startswith("serve import json:dumps") for n in names)
    assert report.endswith("preflight: PASS")
    # The probe files are cleaned up again.
    assert list((tmp_path / "runs").iterdir()) == []


def test_version_skew_fails_per_node(gcs_address, tmp_path):
    checks = run_preflight(gcs_address, str(tmp_path), expect_ray="0.0.1", expect_python="3.0.0")
    versions = [c for c in checks if c.name.startswith("versions ")]
    assert versions and not any(c.ok for c in versions)
    assert "!= local 0.0.1" in versions[0].detail and "!= local 3.0.0" in versions[0].detail
    assert "preflight: FAIL" in format_report(gcs_address, checks)


def test_unwritable_storage_and_missing_gpus_fail(gcs_address, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    checks = run_preflight(gcs_address, str(blocker / "runs"), gpus=2)
    storage = [c for c in checks if c.name.startswith("storage write ")]
    assert storage and not storage[0].ok and "cannot write" in storage[0].detail
    (gpus,) = [c for c in checks if c.name == "gpus"]
    assert not gpus.ok and "2 requested" in gpus.detail


def test_a_node_that_cannot_see_another_nodes_file_is_reported(tmp_path):
    """The read side of the shared-storage probe: files another node wrote must be there."""
    base = str(tmp_path / "probe")
    # Outside Ray, _storage_write needs a runtime context only for the node id: call pieces.
    import pyarrow.fs as pafs

    fs = pafs.LocalFileSystem()
    fs.create_dir(base, recursive=True)
    with fs.open_output_stream(f"{base}/node-a.txt") as out:
        out.write(b"node-a.txt")
    assert _storage_read(base, False, ["node-a.txt", "node-b.txt"]) == ["node-b.txt"]


def test_bad_serve_config_fails_schema_and_import(gcs_address, tmp_path):
    typo = SERVE_OK.replace("import_path", "import_pth")
    checks = run_preflight(gcs_address, str(tmp_path), serve_config_text=typo)
    (serve,) = [c for c in checks if c.name == "serve config"]
    assert not serve.ok and "applications.0.import_path: Field required" in serve.detail
    missing = SERVE_OK.replace("json:dumps", "no_such_module_vitpipe:app")
    checks = run_preflight(gcs_address, str(tmp_path), serve_config_text=missing)
    (imp,) = [c for c in checks if c.name.startswith("serve import")]
    assert not imp.ok and "no_such_module_vitpipe" in imp.detail


def _cli(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    # The console script's entry point (``python -m components.cli.main`` would load that
    # module twice, once as __main__, and its UserError would not be caught).
    code = "import sys; from components.cli.main import main; sys.exit(main())"
    return subprocess.run([sys.executable, "-c", code, "preflight", *args],
                          capture_output=True, text=True, timeout=timeout)


def test_cli_against_the_cluster_prints_a_table_and_exit_codes(gcs_address, tmp_path):
    serve = tmp_path / "serve.yaml"
    serve.write_text(SERVE_OK)
    ok = _cli("--address", gcs_address, "--storage-path", str(tmp_path / "runs"), "--serve-config", str(serve))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "RESULT" in ok.stdout and "preflight: PASS" in ok.stdout
    bad = _cli("--address", gcs_address, "--storage-path", str(tmp_path / "runs"), "--gpus", "1")
    assert bad.returncode == 1 and "preflight: FAIL (1 of" in bad.stdout, bad.stdout + bad.stderr


def test_cli_unreachable_address_and_usage_errors(tmp_path):
    down = _cli("--address", f"127.0.0.1:{free_port()}", "--storage-path", str(tmp_path), timeout=60)
    assert down.returncode == 1 and "cannot reach a Ray GCS" in down.stdout
    usage = _cli("--address", "auto", "--storage-path", str(tmp_path), "--serve-config",
                 str(tmp_path / "missing.yaml"), timeout=60)
    assert usage.returncode == 2 and "cannot read --serve-config" in usage.stderr
    assert _cli("--storage-path", str(tmp_path), timeout=60).returncode == 2  # no --address
