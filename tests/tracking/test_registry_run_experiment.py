"""register_checkpoint(run_id=...) works whatever experiment the process has active."""

import mlflow, torch
from components.core.checkpoint import CheckpointMeta, save_checkpoint
from components.models import build_model
from components.tracking.registry import register_checkpoint

def test_register_into_a_run_of_another_experiment(mlflow_uri, tmp_path):
    mlflow.set_tracking_uri(mlflow_uri)
    run_exp = mlflow.create_experiment("exp-of-the-run")
    run = mlflow.MlflowClient().create_run(run_exp)
    mlflow.set_experiment("some-other-experiment")  # what an earlier promotion leaves behind
    m = build_model("vit_demo", num_classes=3, img_size=64)
    meta = CheckpointMeta(model_name=m.name, task="classification", model_config=m.build_config,
                          class_names=["a", "b", "c"], image_size=64, patch_size=16)
    save_checkpoint(tmp_path / "ck", m.state_dict(), meta)
    version = register_checkpoint(tmp_path / "ck", task="classification", run_id=run.info.run_id,
                                  registered_name="exp-switch", tracking_uri=mlflow_uri)
    assert mlflow.MlflowClient().get_model_version("exp-switch", version).run_id == run.info.run_id
