"""The deployable files: ``cluster.yaml`` (Ray cluster launcher), ``deploy/constraints.txt``
(pinned versions) and ``deploy/kuberay/rayservice.yaml`` (KubeRay) are valid for the tools that
read them and consistent with the service they deploy. No Ray starts and nothing is fetched."""

from __future__ import annotations

import copy
import importlib
import json
import re
import shlex
import subprocess
import sys
import tomllib
from collections.abc import Iterator, Mapping
from importlib import metadata
from pathlib import Path, PurePosixPath
from typing import Any

import jsonschema
import pytest
import ray
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from ray.autoscaler._private.util import prepare_config, validate_config
from ray.serve.schema import ServeDeploySchema

from dfd.version import __version__
from pipeline.models import paper_members
from serve.autoscaling import JOB_QUEUE_POLICY
from serve.config import ReplicaSettings, ServiceConfig, load_config
from tests.support.serveconfig import deployed

REPO = Path(__file__).resolve().parent.parent
CLUSTER_YAML = REPO / "cluster.yaml"
CONSTRAINTS = REPO / "deploy" / "constraints.txt"
RAYSERVICE = REPO / "deploy" / "kuberay" / "rayservice.yaml"
SERVE_YAML = REPO / "serve" / "config.yaml"
BUILDER = "serve.app:build_app_from_env"
REDIS_PORT = 6379

# Fields of the KubeRay ray.io/v1 types as of the v1.7.0 API reference (docs/reference/api.md):
# a misspelt key would otherwise be pruned by the API server without a word.
RAYSERVICE_SPEC_FIELDS = {
    "rayClusterDeletionDelaySeconds",
    "serviceUnhealthySecondThreshold",
    "deploymentUnhealthySecondThreshold",
    "serveService",
    "upgradeStrategy",
    "managedBy",
    "serveConfigV2",
    "rayClusterConfig",
    "excludeHeadPodFromServeSvc",
    "suspend",
}
DEPRECATED_SPEC_FIELDS = {"serviceUnhealthySecondThreshold", "deploymentUnhealthySecondThreshold"}
RAYCLUSTER_SPEC_FIELDS = {
    "upgradeStrategy",
    "authOptions",
    "suspend",
    "managedBy",
    "autoscalerOptions",
    "headServiceAnnotations",
    "enableInTreeAutoscaling",
    "gcsFaultToleranceOptions",
    "historyServerOptions",
    "networkPolicy",
    "tlsOptions",
    "headGroupSpec",
    "rayVersion",
    "workerGroupSpecs",
}
HEAD_GROUP_FIELDS = {
    "template",
    "headService",
    "enableIngress",
    "ingressOptions",
    "resources",
    "labels",
    "rayStartParams",
    "serviceType",
}
WORKER_GROUP_FIELDS = {
    "suspend",
    "groupName",
    "replicas",
    "minReplicas",
    "maxReplicas",
    "idleTimeoutSeconds",
    "priority",
    "resources",
    "labels",
    "rayStartParams",
    "template",
    "scaleStrategy",
    "numOfHosts",
}


def read_yaml(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict), f"{path} must hold a mapping"
    return data


def serve_yaml_app() -> dict[str, Any]:
    (app,) = read_yaml(SERVE_YAML)["applications"]
    return app


def resolve_import_path(import_path: str) -> Any:
    module, _, attr = import_path.partition(":")
    return getattr(importlib.import_module(module), attr)


def model_floor(config: ServiceConfig) -> tuple[float, float]:
    """CPUs and GPUs the model deployments ask for at their minimum replica counts (all
    members of the paper's ensemble)."""
    n_members = len(paper_members())
    d = config.deployments

    def replicas(settings: ReplicaSettings) -> int:
        return settings.autoscaling.min_replicas if settings.autoscaling else settings.num_replicas

    models = [(d.detector, 1), (d.embedder, 1), (d.features, 1), (d.members, n_members)]
    cpus = sum(s.num_cpus * replicas(s) * k for s, k in models)
    return cpus, d.model_gpu_total(n_members)


def field_at(config: ServiceConfig, variable: str) -> Any:
    """The setting a ``DFD_A__B`` variable sets; fails for a name that sets nothing (unknown
    names are skipped by load_config, so a typo would otherwise go unnoticed)."""
    node: Any = config
    for part in variable.removeprefix("DFD_").lower().split("__"):
        assert hasattr(node, part), f"{variable} names no setting ({part!r})"
        node = getattr(node, part)
    return node


# ---------------------------------------------------------------------------------------------
# cluster.yaml


def cluster() -> dict[str, Any]:
    return read_yaml(CLUSTER_YAML)


#: The home of the user the service's image runs as (Ray's image: ``ray``).
IMAGE_HOME = PurePosixPath("/home/ray")


def home_of(config: Mapping[str, Any]) -> PurePosixPath:
    """Where ``~`` is for the commands and file mounts: the container's user's home."""
    return IMAGE_HOME if "docker" in config else PurePosixPath("/home") / config["auth"]["ssh_user"]


def remote(config: Mapping[str, Any], path: str) -> PurePosixPath:
    """A path on a node, ``~`` expanded for the SSH user."""
    if path == "~" or path.startswith("~/"):
        return home_of(config) / path[2:]
    return PurePosixPath(path)


def local_of(config: Mapping[str, Any], remote_path: PurePosixPath) -> Path | None:
    """The file of this repository that a path on a node comes from (``ray up`` runs in the
    repository root, so a relative local path is relative to cluster.yaml's folder)."""
    for target, source in config["file_mounts"].items():
        target_path = remote(config, target)
        if source.startswith("~") or not remote_path.is_relative_to(target_path):
            continue
        return (CLUSTER_YAML.parent / source).resolve() / remote_path.relative_to(target_path)
    return None


def commands(config: Mapping[str, Any], *keys: str) -> Iterator[list[str]]:
    for key in keys:
        for command in config[key]:
            yield shlex.split(command)


def after(tokens: list[str], flag: str) -> str:
    return tokens[tokens.index(flag) + 1]


def ray_start(config: Mapping[str, Any], key: str) -> list[str]:
    (tokens,) = [t for t in commands(config, key) if "start" in t]
    return tokens


def cluster_env(config: Mapping[str, Any]) -> tuple[PurePosixPath, dict[str, str]]:
    """The env file setup_commands write and the variables in it."""
    (tokens,) = [t for t in commands(config, "setup_commands") if t[0] == "printf"]
    lines = tokens[2 : tokens.index(">")]
    env = dict(line.split("=", 1) for line in lines)
    return remote(config, after(tokens, ">")), env


def cluster_service(config: Mapping[str, Any]) -> ServiceConfig:
    """What serve/config.yaml deploys on this cluster: its args under the nodes' DFD_* values."""
    _, env = cluster_env(config)
    app = serve_yaml_app()
    return deployed(load_config(base=app["args"], environ=env), app["deployments"])


def test_cluster_yaml_validates_against_rays_schema() -> None:
    raw = cluster()
    # What `ray up` does before it touches a cloud: Ray's defaults merged in, then the schema
    # and Ray's own consistency checks.
    prepared = prepare_config(copy.deepcopy(raw))
    validate_config(prepared)
    assert prepared["cluster_name"] == "dfd"
    assert prepared["provider"] == {
        "type": "aws",
        "region": "us-east-1",
        "cache_stopped_nodes": False,
    }
    # Ray's default setup commands (`pip install boto3` into the system Python) are replaced:
    # every node runs the image's ray, serve and dfd, and installs nothing.
    for key in ("initialization_commands", "head_setup_commands", "worker_setup_commands"):
        assert raw.get(key) == [], f"{key}: Ray's default would run instead"
    assert prepared["head_setup_commands"] == prepared["worker_setup_commands"]
    assert prepared["head_setup_commands"] == raw["setup_commands"]
    keys = ("head_setup_commands", "head_start_ray_commands", "worker_start_ray_commands")
    every = [tok for tokens in commands(prepared, *keys) for tok in tokens]
    assert {"ray", "serve", "dfd"} <= set(every)
    assert not {"pip", "apt-get", "venv"} & {PurePosixPath(t).name for t in every}


def test_cluster_yaml_schema_rejects_broken_copies() -> None:
    unknown_key = {**cluster(), "max_worker": 8}
    with pytest.raises(jsonschema.ValidationError, match="max_worker"):
        validate_config(prepare_config(unknown_key))
    too_many = copy.deepcopy(cluster())
    too_many["available_node_types"]["gpu_worker"]["min_workers"] = too_many["max_workers"] + 1
    with pytest.raises(ValueError, match="max_workers"):
        validate_config(prepare_config(too_many))


def test_cluster_yaml_node_types_fit_the_service() -> None:
    config = cluster()
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"]["GPU"] == 0
    (gpu_name,) = [name for name, t in types.items() if t["resources"].get("GPU", 0) > 0]
    gpu = types[gpu_name]
    assert gpu["resources"]["GPU"] == 1
    assert 1 <= gpu["min_workers"] <= gpu["max_workers"] <= config["max_workers"]
    # One GPU worker holds every model deployment at its minimum replica count.
    cpus, gpus = model_floor(cluster_service(config))
    assert gpus <= gpu["resources"]["GPU"]
    assert cpus <= gpu["resources"]["CPU"], f"the models need {cpus} CPUs on one GPU worker"
    images = {t["node_config"]["ImageId"] for t in types.values()}
    assert len(images) == 1 and images.pop().startswith("ami-")


def test_cluster_yaml_pulls_the_model_directory_from_the_bucket() -> None:
    """Every node pulls the model directory the service loads from object storage into a host
    folder the container mounts (so a restarted container pulls nothing); nothing is synced
    through the head but the credentials file, which lives outside the repository."""
    config = cluster()
    service = cluster_service(config)
    model_dir = str(service.analysis.inference.model_dir)
    volumes = [o.split()[1] for o in config["docker"]["run_options"] if o.startswith("--volume")]
    assert f"{model_dir}:{model_dir}" in volumes
    assert f"{service.home}:{service.home}" in volumes
    (command,) = [t for t in commands(config, "setup_commands") if "pull" in t]
    pull = command[command.index("dfd") :]
    assert pull[:3] == ["dfd", "models", "pull"]
    assert pull[3].startswith("s3://") and after(pull, "--model-dir") == model_dir
    _, env = cluster_env(config)
    assert after(pull, "--endpoint-url") == env["DFD_STORAGE__ENDPOINT_URL"]
    assert pull[3].split("/")[2] != env["DFD_STORAGE__BUCKET"], "models apart from artefacts"
    # The mounted host folders exist and belong to the image's user (uid 1000) before Docker
    # starts (cloud-init bootcmd).
    for node_type in config["available_node_types"].values():
        user_data = yaml.safe_load(node_type["node_config"]["UserData"])
        boot = " ".join(" ".join(cmd) for cmd in user_data["bootcmd"])
        assert model_dir in boot and str(service.home) in boot and "1000:1000" in boot
    # Credentials come from a file outside the repository, never from cluster.yaml.
    mounts = {remote(config, target): source for target, source in config["file_mounts"].items()}
    ((secrets_target, secrets_source),) = mounts.items()
    assert "secret" in str(secrets_target)
    assert not Path(secrets_source).expanduser().resolve().is_relative_to(REPO)
    assert "AWS_" not in yaml.safe_dump(config), "credentials belong in the secrets file"
    env_file, _ = cluster_env(config)
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        tokens = ray_start(config, key)
        sourced = [remote(config, tokens[i + 1]) for i, t in enumerate(tokens) if t == "."]
        assert sourced == [env_file, secrets_target], key
        assert tokens.index("start") > max(i for i, t in enumerate(tokens) if t == ".")
    assert remote(config, after(command, ".")) == secrets_target  # the pull's credentials


def test_cluster_yaml_ray_ports_leave_redis_alone() -> None:
    config = cluster()
    head = ray_start(config, "head_start_ray_commands")
    worker = ray_start(config, "worker_start_ray_commands")
    (port_flag,) = [t for t in head if t.startswith("--port=")]
    port = int(port_flag.split("=", 1)[1])
    assert port != REDIS_PORT
    (address,) = [t for t in worker if t.startswith("--address=")]
    assert address == f"--address=$RAY_HEAD_IP:{port}"
    assert "--head" in head and "--dashboard-host=0.0.0.0" in head
    assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in head
    starts = config["head_start_ray_commands"] + config["worker_start_ray_commands"]
    # Only the GCS's own Redis (fault tolerance) may be on Redis's port.
    starts = [re.sub(r"RAY_REDIS_ADDRESS=\S+", "", command) for command in starts]
    assert not any(str(REDIS_PORT) in command for command in starts)
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        first = shlex.split(config[key][0])
        assert PurePosixPath(first[0]).name == "ray" and first[1:] == ["stop"], key


def image_source(path: PurePosixPath) -> Path | None:
    """The file of this repository that a path inside the service's image comes from (the
    Dockerfile's WORKDIR and its ``COPY src src`` lines), if any."""
    text = DOCKERFILE.read_text()
    (workdir,) = re.findall(r"^WORKDIR (\S+)$", text, flags=re.MULTILINE)
    if not path.is_relative_to(workdir):
        return None
    relative = path.relative_to(workdir)
    copied = re.findall(r"^COPY \S+ (\S+) \1$", text, flags=re.MULTILINE)
    if not any(relative.is_relative_to(c) for c in copied):
        return None
    return REPO / relative


def test_cluster_yaml_runs_this_versions_image_and_deploys_a_file_it_holds() -> None:
    config = cluster()
    docker = config["docker"]
    image = f"ghcr.io/dfd-project/dfd:{__version__}"
    assert docker["image"] == f"{image}-cpu" and docker["pull_before_run"] is True
    assert "--build-arg VARIANT=cpu" in DOCKERFILE.read_text()
    types = config["available_node_types"]
    for name, node_type in types.items():
        wanted = image if node_type["resources"].get("GPU", 0) else f"{image}-cpu"
        assert node_type.get("docker", {}).get("worker_image", docker["image"]) == wanted, name
    (deploy,) = [t for t in commands(config, "head_start_ray_commands") if "deploy" in t]
    assert deploy[deploy.index("deploy") - 1] == "serve"
    deployed = image_source(remote(config, after(deploy, "deploy")))
    assert deployed == SERVE_YAML and deployed.is_file()


def test_cluster_yaml_settings_reach_the_application() -> None:
    config = cluster()
    _, env = cluster_env(config)
    service = cluster_service(config)
    for variable, value in env.items():
        assert str(field_at(service, variable)) == value, variable
    assert service.redis_url and service.storage.kind == "s3"
    # The DFD_* values override the YAML's args only through this builder.
    assert serve_yaml_app()["import_path"] == BUILDER
    assert callable(resolve_import_path(BUILDER))


# ---------------------------------------------------------------------------------------------
# deploy/constraints.txt


def pins() -> dict[str, str]:
    out: dict[str, str] = {}
    for line in CONSTRAINTS.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, version = line.partition("==")
        assert sep and version and " " not in line, f"not a plain pin: {line!r}"
        out[canonicalize_name(name)] = version
    return out


def project_requirements() -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return [Requirement(r) for r in project["dependencies"]]


def requirement_closure(roots: list[Requirement]) -> set[str]:
    """Every installed distribution the requirements pull in, extras followed."""
    seen: set[tuple[str, frozenset[str]]] = set()
    todo = list(roots)
    while todo:
        req = todo.pop()
        key = (canonicalize_name(req.name), frozenset(req.extras))
        if key in seen:
            continue
        seen.add(key)
        for raw in metadata.requires(req.name) or []:
            sub = Requirement(raw)
            extras = {"", *req.extras}
            if sub.marker is None or any(sub.marker.evaluate({"extra": e}) for e in extras):
                todo.append(sub)
    return {name for name, _ in seen}


def test_constraints_pin_the_installed_versions() -> None:
    pinned = pins()
    for name in ("torch", "torchvision", "ray"):
        assert pinned[name] == metadata.version(name), name
    stale = {
        name: (version, metadata.version(name))
        for name, version in pinned.items()
        if metadata.version(name) != version
    }
    assert not stale, f"regenerate deploy/constraints.txt (see its header): {stale}"
    assert "dfd-service" not in pinned


def make_dry_run(target: str, tmp_path: Path) -> list[str]:
    """The commands ``make TARGET`` would run for a virtualenv that does not exist yet."""
    venv = tmp_path / "venv"
    out = subprocess.run(
        ["make", "--dry-run", "--always-make", f"VENV={venv}", target],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [line for line in out.splitlines() if line.strip()]


@pytest.mark.parametrize("target", ["install", "test", "demo"])
def test_every_install_uses_the_constraints(target: str, tmp_path: Path) -> None:
    # Without the pins, `make install` on a fresh machine takes the newest release of every
    # dependency and test_constraints_pin_the_installed_versions fails on any upstream release.
    installs = [c for c in make_dry_run(target, tmp_path) if "pip install" in c]
    assert installs, f"make {target} installs nothing?"
    for command in installs:
        words = shlex.split(command)
        assert "-c" in words, f"unpinned install in make {target}: {command}"
        assert words[words.index("-c") + 1] == "deploy/constraints.txt", command


def test_ci_runs_the_pinned_make_test() -> None:
    ci = (REPO / ".ci" / "run").read_text()
    assert re.search(r"^make test$", ci, re.MULTILINE), ci


def test_constraints_cover_every_dependency() -> None:
    pinned = pins()
    for req in project_requirements():
        name = canonicalize_name(req.name)
        assert name in pinned, f"{req.name} is not pinned"
        assert req.specifier.contains(pinned[name], prereleases=True), (req, pinned[name])
    unpinned = requirement_closure(project_requirements()) - set(pinned)
    assert not unpinned, f"installed with the project but not pinned: {sorted(unpinned)}"


# ---------------------------------------------------------------------------------------------
# deploy/kuberay/rayservice.yaml


def rayservice() -> dict[str, Any]:
    return read_yaml(RAYSERVICE)


def pod_specs(manifest: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    cluster_spec = manifest["spec"]["rayClusterConfig"]
    specs = {"head": cluster_spec["headGroupSpec"]["template"]["spec"]}
    for group in cluster_spec["workerGroupSpecs"]:
        specs[group["groupName"]] = group["template"]["spec"]
    return specs


def ray_container(pod: Mapping[str, Any]) -> dict[str, Any]:
    (container,) = pod["containers"]
    return container


def pod_env(container: Mapping[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container["env"] if "value" in e}


def kuberay_app(manifest: Mapping[str, Any]) -> dict[str, Any]:
    serve_config = manifest["spec"]["serveConfigV2"]
    assert isinstance(serve_config, str), "serveConfigV2 is a YAML string"
    deploy = ServeDeploySchema.model_validate(yaml.safe_load(serve_config))
    (app,) = deploy.applications
    return app.model_dump(exclude_unset=True)


def kuberay_service(manifest: Mapping[str, Any]) -> ServiceConfig:
    env = pod_env(ray_container(pod_specs(manifest)["head"]))
    app = kuberay_app(manifest)
    return deployed(load_config(base=app["args"], environ=env), app["deployments"])


def quantity(value: str | int) -> float:
    text = str(value)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def test_rayservice_structure() -> None:
    manifest = rayservice()
    assert manifest["apiVersion"] == "ray.io/v1" and manifest["kind"] == "RayService"
    assert manifest["metadata"]["name"] == "dfd"
    spec = manifest["spec"]
    assert set(spec) <= RAYSERVICE_SPEC_FIELDS, set(spec) - RAYSERVICE_SPEC_FIELDS
    assert not set(spec) & DEPRECATED_SPEC_FIELDS
    cluster_spec = spec["rayClusterConfig"]
    assert set(cluster_spec) <= RAYCLUSTER_SPEC_FIELDS, set(cluster_spec) - RAYCLUSTER_SPEC_FIELDS
    assert cluster_spec["rayVersion"] == ray.__version__
    assert cluster_spec["enableInTreeAutoscaling"] is True
    head = cluster_spec["headGroupSpec"]
    assert set(head) <= HEAD_GROUP_FIELDS
    groups = cluster_spec["workerGroupSpecs"]
    for group in [head, *groups]:
        params = group["rayStartParams"]
        assert all(isinstance(v, str) for v in params.values()), "rayStartParams are strings"
    assert head["rayStartParams"]["dashboard-host"] == "0.0.0.0"
    for group in groups:
        assert set(group) <= WORKER_GROUP_FIELDS, set(group) - WORKER_GROUP_FIELDS
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]


def test_rayservice_application_is_the_serve_yaml_service() -> None:
    manifest = rayservice()
    app = kuberay_app(manifest)
    assert callable(resolve_import_path(app["import_path"]))
    assert app["import_path"] == BUILDER
    service = kuberay_service(manifest)
    for variable, value in pod_env(ray_container(pod_specs(manifest)["head"])).items():
        if variable.startswith("DFD_"):
            assert str(field_at(service, variable)) == value, variable
    # Kubernetes and the VMs of cluster.yaml run the same service.
    assert service.model_dump() == cluster_service(cluster()).model_dump()


def test_rayservice_pods() -> None:
    manifest = rayservice()
    service = kuberay_service(manifest)
    specs = pod_specs(manifest)
    head_group = manifest["spec"]["rayClusterConfig"]["headGroupSpec"]
    assert head_group["rayStartParams"]["num-gpus"] == "0"
    containers = {name: ray_container(pod) for name, pod in specs.items()}
    for name, container in containers.items():
        image, _, tag = container["image"].rpartition(":")
        assert image and tag == __version__, name
        # Same settings and credentials everywhere; credentials only from a Secret.
        assert container["env"] == containers["head"]["env"], name
        refs = [e["valueFrom"]["secretKeyRef"] for e in container["env"] if "valueFrom" in e]
        assert refs and all(ref["name"] and ref["key"] for ref in refs)
        assert {e["name"] for e in container["env"] if "valueFrom" in e} >= {
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
        }
        # The model directory from a claim, read-only, where the args say; a writable home.
        volumes = {v["name"]: v for v in specs[name]["volumes"]}
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        model_mount = mounts[str(service.analysis.inference.model_dir)]
        assert model_mount["readOnly"] is True
        assert "persistentVolumeClaim" in volumes[model_mount["name"]]
        home_mount = mounts[str(service.home)]
        assert not home_mount.get("readOnly", False)
        resources = container["resources"]
        assert resources["requests"] and resources["limits"]
    assert "nvidia.com/gpu" not in str(containers["head"]["resources"])
    gpu_groups = [n for n, c in containers.items() if "nvidia.com/gpu" in c["resources"]["limits"]]
    assert gpu_groups and "head" not in gpu_groups
    cpus, gpus = model_floor(service)
    for name in gpu_groups:
        limits = containers[name]["resources"]["limits"]
        assert gpus <= quantity(limits["nvidia.com/gpu"]) == 1
        assert cpus <= quantity(limits["cpu"]), f"the models need {cpus} CPUs in one {name} pod"


def app_cpu_floor(service: ServiceConfig) -> float:
    """CPUs the ingress and the job runner ask for at their replica counts."""
    d = service.deployments
    return sum(s.num_cpus * replicas(s) for s in (d.ingress, d.runner))


def replicas(settings: ReplicaSettings) -> int:
    """A deployment's replicas at rest: its autoscaling minimum, or its fixed count."""
    return settings.autoscaling.min_replicas if settings.autoscaling else settings.num_replicas


def test_the_head_runs_no_replica_and_keeps_its_state_in_a_redis_of_its_own() -> None:
    """Losing the head must not be an outage: no application replica may sit on it (all of
    them ask for CPUs, the head offers none), a CPU group of at least two nodes holds the
    ingress and the runner, and the GCS keeps its state in a Redis that is not the job store."""
    config = cluster()
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"] == {"CPU": 0, "GPU": 0}
    service = cluster_service(config)
    cpu_types = [t for n, t in types.items() if t is not head and t["resources"]["GPU"] == 0]
    assert cpu_types and all(t["min_workers"] >= 2 for t in cpu_types)
    assert max(t["resources"]["CPU"] for t in cpu_types) >= app_cpu_floor(service)
    # Two job runners and two ingress replicas, never two on one node.
    for replica in (service.deployments.runner, service.deployments.ingress):
        assert replicas(replica) >= 2 and replica.max_replicas_per_node == 1
    # The runners scale on the job queue, up to one per CPU node.
    runner = service.deployments.runner.autoscaling
    assert runner is not None and runner.policy == JOB_QUEUE_POLICY
    assert runner.max_replicas <= max(t["max_workers"] for t in cpu_types)
    start = " ".join(config["head_start_ray_commands"])
    gcs_redis = re.search(r"RAY_REDIS_ADDRESS=(\S+)", start)
    assert gcs_redis, "the head starts without GCS fault tolerance"
    assert str(service.redis_url) and gcs_redis.group(1) not in str(service.redis_url)

    manifest = rayservice()
    cluster_spec = manifest["spec"]["rayClusterConfig"]
    assert cluster_spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    ft = cluster_spec["gcsFaultToleranceOptions"]
    job_store = str(kuberay_service(manifest).redis_url)
    assert ft["redisAddress"] and ft["redisAddress"] not in job_store
    assert ft["redisPassword"]["valueFrom"]["secretKeyRef"]["name"]
    specs = pod_specs(manifest)
    cpu_groups = [
        g
        for g in cluster_spec["workerGroupSpecs"]
        if "nvidia.com/gpu" not in ray_container(specs[g["groupName"]])["resources"]["limits"]
    ]
    assert cpu_groups and all(g["minReplicas"] >= 2 for g in cpu_groups)
    limits = [
        quantity(ray_container(specs[g["groupName"]])["resources"]["limits"]["cpu"])
        for g in cpu_groups
    ]
    assert max(limits) >= app_cpu_floor(kuberay_service(manifest))


DOCKERFILE = REPO / "Dockerfile"


def dockerfile_args() -> dict[str, str]:
    return dict(re.findall(r"^ARG (\w+)=(\S+)$", DOCKERFILE.read_text(), flags=re.MULTILINE))


def test_the_image_is_rays_at_the_pinned_versions_with_the_project_installed_pinned() -> None:
    """The Dockerfile the RayService's image is built from: Ray's image at the Ray and Python
    the constraints pin, the project installed with them, no weights, no entrypoint (KubeRay
    starts Ray itself), and the tag the RayService names is this version."""
    text = DOCKERFILE.read_text()
    args = dockerfile_args()
    pins = dict(
        line.split("==", 1)
        for line in (REPO / "deploy/constraints.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    )
    assert args["RAY_VERSION"] == pins["ray"] == ray.__version__
    assert args["PYTHON"] == f"py3{sys.version_info.minor}"
    (base,) = re.findall(r"^FROM (\S+)$", text, flags=re.MULTILINE)
    assert base == "rayproject/ray:${RAY_VERSION}-${PYTHON}-${VARIANT}"
    assert args["VARIANT"].startswith("cu") and "VARIANT=cpu" in text  # both variants
    install = re.search(r"pip install .*?(?<!\\)\n", text, flags=re.DOTALL)
    assert install and "-c deploy/constraints.txt ." in install.group(0).replace("\\\n", " ")
    # Every package the wheel holds is copied; nothing else (no weights, no tests).
    packages = {"pipeline", "serve", "batch", "evaluation", "bench", "dfd"}
    copied = set(re.findall(r"^COPY \S+ (\S+) \1$", text, flags=re.MULTILINE))
    assert packages <= copied and copied <= packages | {"deploy/constraints.txt"}
    assert not re.search(r"\.(pt|pth|onnx|h5)\b|models/", text.split("FROM", 1)[1])
    assert not re.search(r"^(ENTRYPOINT|CMD)\b", text, flags=re.MULTILINE)
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".git", ".venv*", "tests", "runs"} <= set(ignored)
    # The image the RayService runs is this version's, as the README builds it.
    for pod in pod_specs(rayservice()).values():
        assert ray_container(pod)["image"] == f"ghcr.io/dfd-project/dfd:{__version__}"
    assert f"docker build -t ghcr.io/dfd-project/dfd:{__version__} ." in text


def test_the_grafana_dashboard_charts_every_service_metric_by_its_exported_name() -> None:
    """``deploy/grafana/dfd-service.json`` queries the series Ray exports for the metrics
    ``serve/metrics.py`` defines (``ray_`` prefix; counters ``_total``, histograms ``_bucket``),
    every one of them, and nothing the service does not define but Serve's own queue."""
    from serve.app import APP_NAME
    from serve.metrics import METRICS

    dashboard = json.loads((REPO / "deploy" / "grafana" / "dfd-service.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    suffix = {"counter": "_total", "histogram": "_bucket", "gauge": ""}
    exported = {f"ray_{n}{suffix[kind]}" for n, (kind, _, _) in METRICS.items()}
    used = {m for e in exprs for m in re.findall(r"\bray_\w+", e)}
    assert used - exported == {"ray_serve_deployment_queued_queries"}
    assert exported <= used
    for e in exprs:
        assert 'application="$application"' in e, e
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["application"]["query"] == APP_NAME
    assert {p["datasource"]["uid"] for p in dashboard["panels"]} == {"${datasource}"}
