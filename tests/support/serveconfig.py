"""A Serve config's ``deployments[]`` entries read back into the service's settings, so that the
YAML files are held to the rules of :mod:`serve.config` (and compared with each other)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from serve.app import member_deployment_name
from serve.config import DeploymentsConfig, ModelDeploymentSettings, ReplicaSettings, ServiceConfig

#: The deployments' names and their fields in :class:`DeploymentsConfig`, members aside.
FIELDS = {
    "Ingress": "ingress",
    "JobRunner": "runner",
    "FaceDetector": "detector",
    "FaceEmbedder": "embedder",
    "RegionFeatures": "features",
}


def entry_settings(entry: Mapping[str, Any]) -> ReplicaSettings:
    """One entry's settings, validated (a model deployment's with its batch knobs)."""
    name = entry["name"]
    if FIELDS.get(name) in ("ingress", "runner"):
        return ReplicaSettings.from_serve_entry(entry)
    return ModelDeploymentSettings.from_serve_entry(entry)


def deployed(config: ServiceConfig, entries: Sequence[Mapping[str, Any]]) -> ServiceConfig:
    """``config`` with the deployment settings its Serve config's entries set (every deployment
    named once; the members' entries alike, as :func:`serve.app.deployment_entries` writes)."""
    names = [e["name"] for e in entries]
    assert len(names) == len(set(names)), f"an entry names a deployment twice: {names}"
    fields: dict[str, Any] = {}
    members = []
    for entry in entries:
        settings = entry_settings(entry)
        if entry["name"].startswith(member_deployment_name("")):
            members.append(settings)
        else:
            fields[FIELDS[entry["name"]]] = settings
    assert members and all(m == members[0] for m in members), "members' entries differ"
    fields["members"] = members[0]
    assert set(fields) == set(DeploymentsConfig.model_fields), set(fields)
    return config.model_copy(update={"deployments": DeploymentsConfig(**fields)})
