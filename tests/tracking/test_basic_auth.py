"""MLflow basic auth (``mlflow server --app-name basic-auth``): a client without credentials
is refused; one with ``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD`` registers."""

from __future__ import annotations

import pytest
import requests

from components.tracking.registry import RegistryError, register_checkpoint, resolve_uri
from components.tracking.server import MlflowServer


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory):
    server = MlflowServer(root=tmp_path_factory.mktemp("mlflow-auth"), app_name="basic-auth")
    server.start()
    yield server
    server.stop()


def test_unauthenticated_refused_authenticated_registers(auth_server, checkpoint_factory,
                                                         model_name, monkeypatch):
    url = f"{auth_server.uri}/api/2.0/mlflow/registered-models/create"
    assert requests.post(url, json={"name": model_name}, timeout=30).status_code == 401
    wrong = requests.post(url, json={"name": model_name}, timeout=30,
                          auth=(auth_server.admin_username, "wrong-password"))
    assert wrong.status_code == 401
    # The auth files live under the server's root, not in the working directory.
    assert (auth_server.root / "basic_auth.db").is_file()

    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    ckpt = checkpoint_factory(21)
    with pytest.raises(RegistryError, match="MLFLOW_TRACKING_USERNAME"):
        register_checkpoint(ckpt, task="classification", registered_name=model_name,
                            tracking_uri=auth_server.uri)
    with pytest.raises(RegistryError, match="refused"):
        resolve_uri(f"models:/{model_name}@champion", tracking_uri=auth_server.uri)

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", auth_server.admin_username)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", auth_server.admin_password)
    version = register_checkpoint(ckpt, task="classification", registered_name=model_name,
                                  tracking_uri=auth_server.uri)
    assert resolve_uri(f"models:/{model_name}/{version}",
                       tracking_uri=auth_server.uri).version == version
