"""The Serve config file: Ray's schema accepts it, it is what `serve build` makes of the
code today, and its user_configs are valid vitpipe settings."""

from __future__ import annotations

import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from components.serving.config_file import (
    COLOCATED_IMPORT_PATH, SERVE_COLOCATED_CONFIG, SERVE_CONFIG, build_serve_config_text,
    deploy_schema, load_config, validate_config,
)
from components.serving.settings import IngressSettings, ModelServerSettings


def test_committed_config_is_a_valid_serve_deploy_schema():
    schema = ServeDeploySchema.model_validate(load_config())
    (app,) = schema.applications
    assert app.name == "vitpipe" and app.import_path == "components.serving.app:app"
    deployments = {d.name: d for d in app.deployments}
    assert set(deployments) == {"ingress", "classifier", "detector"}
    for dep in deployments.values():
        assert dep.autoscaling_config["min_replicas"] >= 1
        assert dep.autoscaling_config["max_replicas"] >= dep.autoscaling_config["min_replicas"]
        assert dep.autoscaling_config["target_ongoing_requests"] > 0
        assert dep.max_ongoing_requests >= 1 and dep.ray_actor_options.num_cpus > 0
    for name in ("classifier", "detector"):
        settings = ModelServerSettings.model_validate(deployments[name].user_config)
        assert settings.model_uri == f"models:/vitpipe-{name}@champion"
        # a full dynamic batch fits in what a replica accepts at once
        assert deployments[name].max_ongoing_requests >= settings.max_batch_size
    IngressSettings.model_validate(deployments["ingress"].user_config)
    assert len(validate_config(load_config())) == 3


def test_committed_config_matches_serve_build_of_the_code():
    assert SERVE_CONFIG.read_text() == build_serve_config_text(), (
        "pipelines/configs/serve.yaml is out of date: run 'vitpipe serve build-config'")


def test_committed_colocated_config_matches_serve_build_and_validates():
    assert SERVE_COLOCATED_CONFIG.read_text() == build_serve_config_text(COLOCATED_IMPORT_PATH), (
        "pipelines/configs/serve_colocated.yaml is out of date: run 'vitpipe serve build-config'")
    config = load_config(SERVE_COLOCATED_CONFIG)
    (app,) = ServeDeploySchema.model_validate(config).applications
    assert [d.name for d in app.deployments] == ["server"]
    (line,) = validate_config(config)
    assert line.startswith("vitpipe/server: ColocatedSettings ok")
    models = app.deployments[0].user_config["models"]
    assert models["classification"]["model_uri"] == "models:/vitpipe-classifier@champion"
    assert models["detection"]["model_uri"] == "models:/vitpipe-detector@champion"


def test_environment_edits_stay_valid_and_bad_settings_are_caught():
    schema = deploy_schema(load_config(), model_uris={"classifier": "models:/x/3"},
                           model_settings={"max_batch_size": 4}, env_vars={"A": "b"},
                           num_cpus=0.5, num_replicas=2)
    (app,) = schema.applications
    cls = next(d for d in app.deployments if d.name == "classifier")
    assert cls.user_config["model_uri"] == "models:/x/3" and cls.num_replicas == 2
    assert app.runtime_env["env_vars"] == {"A": "b"}
    with pytest.raises(ValueError):
        deploy_schema(load_config(), model_uris={"nope": "models:/x/1"})
    broken = yaml.safe_load(SERVE_CONFIG.read_text())
    broken["applications"][0]["deployments"][0]["user_config"]["max_batch_size"] = 0
    with pytest.raises(ValueError):
        validate_config(broken)


def test_cli_check_config_exit_codes(tmp_path, capsys):
    from components.cli.main import main

    assert main(["serve", "check-config", str(SERVE_CONFIG)]) == 0
    assert "vitpipe/classifier" in capsys.readouterr().out
    bad = tmp_path / "serve.yaml"
    config = load_config()
    config["applications"][0]["deployments"][0]["user_config"]["precision"] = "fp8"
    bad.write_text(yaml.safe_dump(config))
    assert main(["serve", "check-config", str(bad)]) == 2
    assert main(["serve", "check-config", str(tmp_path / "missing.yaml")]) == 2


def test_app_builder_arguments():
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary

    from components.serving.app import AppArgs, build_app

    # what `serve run components.serving.app:build_app detector_uri=null` passes
    assert AppArgs.model_validate({"detector_uri": "null"}).detector_uri is None
    app = call_user_app_builder_with_args_if_necessary(
        build_app, {"detector_uri": "null", "classifier_uri": "models:/x/1", "replicas": 2})
    assert app is not None
    with pytest.raises(ValueError):
        build_app({"classifier_uri": None, "detector_uri": "none"})
    with pytest.raises(ValueError):
        build_app({"replica": 2})  # unknown key


def test_deploy_schema_states_replicas_one_way_per_deployment():
    """A pinned count must null the code's autoscaling in the config (a key left out keeps
    it, and the controller then starts ``min_replicas``); autoscaling drops the count."""
    pinned = deploy_schema(load_config(), num_replicas={"classifier": 2})
    deps = {d.name: d for d in pinned.applications[0].deployments}
    assert deps["classifier"].num_replicas == 2 and deps["classifier"].autoscaling_config is None
    assert "autoscaling_config" in deps["classifier"].model_fields_set  # explicit null
    assert deps["detector"].autoscaling_config["min_replicas"] >= 1  # the others untouched
    everywhere = deploy_schema(load_config(), num_replicas=3)
    assert all(d.num_replicas == 3 and d.autoscaling_config is None
               for d in everywhere.applications[0].deployments)

    scaling = {"min_replicas": 1, "max_replicas": 5, "target_ongoing_requests": 3}
    scaled = deploy_schema(load_config(), autoscaling={"classifier": scaling},
                           num_replicas={"ingress": 1})
    deps = {d.name: d for d in scaled.applications[0].deployments}
    assert deps["classifier"].autoscaling_config == scaling
    assert "num_replicas" not in deps["classifier"].model_fields_set
    assert deps["ingress"].num_replicas == 1 and deps["ingress"].autoscaling_config is None
    assert any("classifier: ModelServerSettings ok, replicas 1..5" in line
               for line in validate_config(scaled.model_dump(exclude_unset=True)))

    with pytest.raises(ValueError, match="not both"):
        deploy_schema(load_config(), num_replicas=2, autoscaling={"classifier": scaling})
    with pytest.raises(ValueError, match="not both"):
        deploy_schema(load_config(), num_replicas={"detector": 1},
                      autoscaling={"detector": scaling})
    with pytest.raises(ValueError, match="no deployment named"):
        deploy_schema(load_config(), autoscaling={"nope": scaling})


def test_one_model_config_serves_that_model_only():
    from components.serving.config_file import one_model_config

    config = one_model_config(load_config(), "classifier")
    (app,) = ServeDeploySchema.model_validate(config).applications
    assert app.import_path == "components.serving.app:build_app"
    assert app.args == {"detector_uri": None}
    assert [d.name for d in app.deployments] == ["classifier", "ingress"]
    assert len(load_config()["applications"][0]["deployments"]) == 3  # input untouched
    with pytest.raises(ValueError):
        one_model_config(load_config(), "ingress")
