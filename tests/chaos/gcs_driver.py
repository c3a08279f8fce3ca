"""A short Ray driver for the GCS-loss chaos test (run as a script, joins one cluster, exits).

    gcs_driver.py GCS_ADDRESS deploy SCHEMA_JSON HTTP_PORT   start Serve there, deploy the app
    gcs_driver.py GCS_ADDRESS status                         the app's status and replicas

Prints one JSON line. Serve is detached: the application outlives this driver.
"""

from __future__ import annotations

import json
import sys


def main(argv: list[str]) -> dict:
    import ray
    from ray import serve
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    address, action, *rest = argv
    ray.init(address=address, log_to_driver=False, configure_logging=False)
    if action == "deploy":
        schema_path, http_port = rest
        serve.start(http_options={"host": "127.0.0.1", "port": int(http_port)})
        with open(schema_path) as f:
            _get_global_client().deploy_apps(ServeDeploySchema.model_validate_json(f.read()))
        return {"deployed": True}
    if action == "status":
        details = _get_global_client().get_serve_details()
        apps = {}
        for name, app in details.get("applications", {}).items():
            apps[name] = {
                "status": app["status"],
                "deployments": {
                    dep_name: {"status": dep["status"],
                               "replicas": [{"state": r["state"], "pid": r.get("pid"),
                                             "replica_id": r["replica_id"]}
                                            for r in dep.get("replicas", [])]}
                    for dep_name, dep in app["deployments"].items()},
            }
        alive = sum(1 for node in ray.nodes() if node["Alive"])
        return {"applications": apps, "alive_nodes": alive}
    raise SystemExit(f"unknown action {action!r}")


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:]), default=str), flush=True)
