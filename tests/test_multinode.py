"""Several Ray nodes on one machine (ray.cluster_utils.Cluster) with storage on a local S3-compatible server
(moto, on loopback): trials spread over the nodes, results read back from the bucket, and a worker node that
dies mid-sweep costs its trials only a retry."""

from __future__ import annotations

import threading
import time

import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from tests.sweep_helpers import MiB, set_test_env, smoke_spec

BUCKET = "tightrope-test"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    import os

    from moto.server import ThreadedMotoServer

    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    fs = pafs.S3FileSystem(endpoint_override=f"{host}:{port}", scheme="http", allow_bucket_creation=True,
                           access_key="testing", secret_key="testing", region="us-east-1")
    fs.create_dir(BUCKET)
    yield endpoint, fs
    server.stop()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, s3):
    set_test_env(tmp_path_factory.mktemp("cache"))
    import ray
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "include_dashboard": False, "object_store_memory": 128 * MiB})
    workers = [c.add_node(num_cpus=1, object_store_memory=128 * MiB) for _ in range(2)]
    c.wait_for_nodes()
    yield c, workers
    ray.shutdown()
    c.shutdown()


def _spec(tmp_path, endpoint, name):
    return smoke_spec(f"s3://{BUCKET}/sweeps", name=name, endpoint=endpoint, wandb={"mode": "disabled"},
                      resources={"cpu": 1, "gpu": 0})


def test_local_folder_refused_on_multi_node(cluster, tmp_path):
    from orchestrator.cli import UsageError
    from orchestrator.sweep import run_sweep

    c, _ = cluster
    with pytest.raises(UsageError, match="storage"):
        run_sweep(smoke_spec(tmp_path / "store", name="local"), address=c.address, quiet=True)


def test_trials_spread_over_nodes_with_results_in_bucket(cluster, s3, tmp_path, monkeypatch):
    from orchestrator.sweep import run_sweep

    c, _ = cluster
    endpoint, fs = s3
    monkeypatch.setenv("TIGHTROPE_RESULTS", str(tmp_path / "local"))
    spec = _spec(tmp_path, endpoint, "multinode")
    run_sweep(spec, address=c.address, quiet=True)
    trials = pq.read_table(f"{BUCKET}/sweeps/multinode/trials.parquet", filesystem=fs).to_pylist()
    evals = pq.read_table(f"{BUCKET}/sweeps/multinode/evals.parquet", filesystem=fs).to_pylist()
    assert len(trials) == spec.n_trials()
    assert {t["status"] for t in trials} == {"completed"}
    assert len({t["node_id"] for t in trials}) >= 2
    cfg = spec.trial_config()
    assert len(evals) == spec.n_trials() * (cfg.train.steps // cfg.eval.every + 1)


def test_worker_node_dies_mid_sweep(cluster, s3, tmp_path, monkeypatch):
    from orchestrator.sweep import run_sweep

    c, workers = cluster
    endpoint, fs = s3
    monkeypatch.setenv("TIGHTROPE_RESULTS", str(tmp_path / "local"))
    spec = _spec(tmp_path, endpoint, "node-loss")
    out: dict = {}
    sweep = threading.Thread(target=lambda: out.update(run_sweep(spec, address=c.address, quiet=True)))
    sweep.start()
    # wait for a checkpoint in the bucket, then take one worker node away
    deadline = time.time() + 180
    while time.time() < deadline:
        found = fs.get_file_info(pafs.FileSelector(f"{BUCKET}/sweeps/node-loss", recursive=True, allow_not_found=True))
        if any("checkpoint_" in f.path for f in found):
            break
        time.sleep(0.5)
    c.remove_node(workers[1])
    sweep.join(timeout=400)
    assert not sweep.is_alive()
    trials = out["trials"]
    assert len(trials) == spec.n_trials()
    assert {t["status"] for t in trials} == {"completed"}
    assert sum(t["retries"] for t in trials) >= 1
