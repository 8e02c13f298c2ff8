"""The Ray Serve recipes in configs/serve/ against what they feed (no cluster is started): each parses as
a Ray Serve config, imports `deltamem.serve.cluster:build`, passes options it accepts, names only its
deployments, and bounds the replicas' autoscaling."""

from __future__ import annotations

import glob
import os

import pytest
import yaml

pytest.importorskip("ray.serve", reason="needs Ray Serve: pip install -e '.[cluster]'")

from ray.serve.schema import ServeDeploySchema  # noqa: E402

from deltamem.serve import cluster  # noqa: E402

CONFIGS = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "..", "configs", "serve", "*.yaml")))


def test_there_are_recipes():
    assert {os.path.basename(p) for p in CONFIGS} >= {"cluster.yaml", "local.yaml"}


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_recipe_matches_the_builder(path):
    with open(path) as f:
        data = yaml.safe_load(f)
    ServeDeploySchema.model_validate(data)
    for app in data["applications"]:
        assert app["import_path"] == "deltamem.serve.cluster:build" and app["route_prefix"] == "/"
        args = dict(app["args"])
        args.pop("api_keys", None)  # a file on the cluster, not here
        cluster.build(args)  # binds the deployments: valid options
        deployments = {d["name"]: d for d in app["deployments"]}
        assert set(deployments) <= {cluster.REPLICA, cluster.INGRESS}
        scaling = deployments[cluster.REPLICA]["autoscaling_config"]
        assert 1 <= scaling["min_replicas"] <= scaling["max_replicas"]


@pytest.mark.parametrize("args,message", [
    ({"replicas": 0}, "replicas"), ({"max_batch": "many"}, "max_batch"), ({"nope": 1}, "unknown option"),
    ({"api_keys": "/no/such/keys.txt"}, "No such file"), ({"replica_cpus": -1}, "replica_cpus"),
])
def test_bad_options_name_the_field(args, message):
    with pytest.raises((ValueError, OSError), match=message):
        cluster.ClusterOptions.from_args(args)


def test_options_from_serve_run_strings():
    o = cluster.ClusterOptions.from_args({"replicas": "3", "batch_wait_ms": "2.5", "max_batch": "8"})
    assert (o.replicas, o.batch_wait_ms, o.max_batch) == (3, 2.5, 8)
