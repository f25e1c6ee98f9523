"""deploy/: the Kubernetes manifests (README, "Running sweeps and sessions on Kubernetes").

No cluster and no network: the Job, the PersistentVolumeClaims and every pod template of the
RayCluster are validated against the Kubernetes schemas that kubernetes-validate ships (strict: an
unknown field is refused); the RayCluster's own fields against a schema written below from
KubeRay's v1 API reference (the fields this project uses). Then what the schemas cannot see: the
images and commands are those of the Containerfile, the Job's args are flags of the session CLI,
the documented sweep command is one tools.sweep takes, and a broken copy of each manifest is
refused. tests/test_container.py runs the RayCluster's commands and probes in the sweep image.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from actors import secrets
from actors.config import Config, load
from actors.main import build_parser
from tests.conftest import REPO

kv = pytest.importorskip(
    "kubernetes_validate",
    reason="kubernetes-validate is not installed (the test extra: pip install -e '.[test]')",
)
yaml = pytest.importorskip("yaml", reason="PyYAML is not installed (it comes with kubernetes-validate)")
jsonschema = pytest.importorskip(
    "jsonschema", reason="jsonschema is not installed (it comes with kubernetes-validate)"
)

DEPLOY = REPO / "deploy"
# a version whose schemas every kubernetes-validate the test extra allows (>= 1.30) ships
K8S_VERSION = "1.30"
SESSION_IMAGE = "btc-laptop-agents:latest"
SWEEP_IMAGE = "btc-laptop-agents:sweep"
README_SECTION = "## Running sweeps and sessions on Kubernetes"

# KubeRay's RayCluster (ray.io/v1), the fields used here, from its API reference. Each pod
# template's inside is a Kubernetes PodTemplateSpec: kubernetes-validate checks it (see below).
_STRINGS = {"type": "object", "additionalProperties": {"type": "string"}}
_COUNT = {"type": "integer", "minimum": 0}
_TEMPLATE = {
    "type": "object",
    "required": ["spec"],
    "properties": {"metadata": {"type": "object"}, "spec": {"type": "object"}},
    "additionalProperties": False,
}
RAYCLUSTER_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "ray.io/v1"},
        "kind": {"const": "RayCluster"},
        "metadata": {
            "type": "object",
            "required": ["name"],
            "additionalProperties": False,
            "properties": {
                "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63},
                "namespace": {"type": "string"},
                "labels": _STRINGS,
                "annotations": _STRINGS,
            },
        },
        "spec": {
            "type": "object",
            "required": ["rayVersion", "headGroupSpec", "workerGroupSpecs"],
            "additionalProperties": False,
            "properties": {
                "rayVersion": {"type": "string"},
                "enableInTreeAutoscaling": {"type": "boolean"},
                "headGroupSpec": {
                    "type": "object",
                    "required": ["rayStartParams", "template"],
                    "additionalProperties": False,
                    "properties": {
                        "rayStartParams": _STRINGS,
                        "serviceType": {"type": "string"},
                        "template": _TEMPLATE,
                    },
                },
                "workerGroupSpecs": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["groupName", "minReplicas", "maxReplicas", "rayStartParams", "template"],
                        "additionalProperties": False,
                        "properties": {
                            "groupName": {"type": "string", "minLength": 1},
                            "replicas": _COUNT,
                            "minReplicas": _COUNT,
                            "maxReplicas": _COUNT,
                            "rayStartParams": _STRINGS,
                            "template": _TEMPLATE,
                        },
                    },
                },
            },
        },
    },
}


def _load(name: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all((DEPLOY / name).read_text()) if doc is not None]


def _one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    [doc] = [d for d in docs if d["kind"] == kind]
    return doc


def _templates(cluster: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(group, pod template) of the head and of each worker group."""
    yield "head", cluster["spec"]["headGroupSpec"]["template"]
    for group in cluster["spec"]["workerGroupSpecs"]:
        yield group["groupName"], group["template"]


def _as_pod_template(name: str, template: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": name}, "template": template}


def validate(doc: dict[str, Any]) -> None:
    """Raises jsonschema.ValidationError (kubernetes_validate's is one) for an invalid document."""
    if doc.get("kind") == "RayCluster":
        jsonschema.Draft202012Validator(RAYCLUSTER_SCHEMA).validate(doc)
        for group, template in _templates(doc):
            kv.validate(_as_pod_template(f"btc-sweep-{group}", template), K8S_VERSION, strict=True)
    else:
        kv.validate(doc, K8S_VERSION, strict=True)


def _containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    if doc["kind"] == "RayCluster":
        return [c for _, t in _templates(doc) for c in t["spec"]["containers"]]
    return list(doc["spec"]["template"]["spec"]["containers"])


def _pod_specs(doc: dict[str, Any]) -> list[dict[str, Any]]:
    if doc["kind"] == "RayCluster":
        return [t["spec"] for _, t in _templates(doc)]
    return [doc["spec"]["template"]["spec"]]


def _containerfile() -> str:
    return (REPO / "Containerfile").read_text()


def _readme_section() -> str:
    readme = (REPO / "README.md").read_text()
    assert README_SECTION in readme, f"README.md lost its section {README_SECTION!r}"
    return readme.split(README_SECTION, 1)[1].split("\n## ", 1)[0]


def _commands(text: str, marker: str) -> list[list[str]]:
    """The command lines of `text` (comment lines of a manifest or a README block) containing
    `marker`, backslash continuations joined, split as the shell would."""
    lines = [re.sub(r"^#\s?", "", line) for line in text.splitlines()]
    joined = re.sub(r"\\\n\s*", " ", "\n".join(lines))
    commands = [shlex.split(line.strip(), comments=True) for line in joined.splitlines() if marker in line]
    words = marker.split()
    return [c for c in commands if any(c[i : i + len(words)] == words for i in range(len(c)))]


# --- the schemas ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["session-job.yaml", "raycluster.yaml"])
def test_every_manifest_is_valid(name: str) -> None:
    docs = _load(name)
    assert docs
    for doc in docs:
        validate(doc)


def test_the_raycluster_pod_templates_are_pod_template_specs() -> None:
    cluster = _one(_load("raycluster.yaml"), "RayCluster")
    groups = [group for group, _ in _templates(cluster)]
    assert groups[0] == "head" and len(groups) >= 2 and len(set(groups)) == len(groups)
    for group, template in _templates(cluster):
        assert kv.validate(_as_pod_template(group, template), K8S_VERSION, strict=True) == K8S_VERSION
    for worker in cluster["spec"]["workerGroupSpecs"]:
        assert 0 <= worker["minReplicas"] <= worker["replicas"] <= worker["maxReplicas"]


def _path(*keys: Any) -> Callable[[dict[str, Any]], Any]:
    def get(doc: dict[str, Any]) -> Any:
        for key in keys:
            doc = doc[key]
        return doc

    return get


_HEAD = ("spec", "headGroupSpec", "template", "spec", "containers", 0)
_WORKER = ("spec", "workerGroupSpecs", 0)
BROKEN: list[tuple[str, str, str, Callable[[dict[str, Any]], None]]] = [
    ("session-job.yaml", "Job", "misspelt field", lambda d: d["spec"].update(backofLimit=4)),
    (
        "session-job.yaml",
        "Job",
        "not a boolean",
        lambda d: _path("spec", "template", "spec", "containers", 0, "securityContext")(d).update(
            readOnlyRootFilesystem="yes"
        ),
    ),
    ("session-job.yaml", "Job", "no containers", lambda d: d["spec"]["template"]["spec"].pop("containers")),
    (
        "session-job.yaml",
        "PersistentVolumeClaim",
        "unknown field",
        lambda d: d["spec"].update(size="1Gi"),
    ),
    ("raycluster.yaml", "RayCluster", "old API", lambda d: d.update(apiVersion="ray.io/v1alpha1")),
    (
        "raycluster.yaml",
        "RayCluster",
        "negative replicas",
        lambda d: _path(*_WORKER)(d).update(minReplicas=-1),
    ),
    (
        "raycluster.yaml",
        "RayCluster",
        "a number in rayStartParams",
        lambda d: _path(*_WORKER, "rayStartParams")(d).update({"num-cpus": 2}),
    ),
    ("raycluster.yaml", "RayCluster", "unknown spec field", lambda d: d["spec"].update(headGroupSpecs={})),
    ("raycluster.yaml", "RayCluster", "no groupName", lambda d: _path(*_WORKER)(d).pop("groupName")),
    (
        "raycluster.yaml",
        "RayCluster",
        "head container field misspelt",
        lambda d: _path(*_HEAD)(d).update(volumeMount=[]),
    ),
    (
        "raycluster.yaml",
        "RayCluster",
        "worker port not a number",
        lambda d: _path(*_WORKER, "template", "spec", "containers", 0)(d).update(
            ports=[{"containerPort": "http"}]
        ),
    ),
]


@pytest.mark.parametrize(("name", "kind", "why", "breaks"), BROKEN, ids=[b[2] for b in BROKEN])
def test_a_broken_copy_is_refused(
    name: str, kind: str, why: str, breaks: Callable[[dict[str, Any]], None]
) -> None:
    doc = _one(_load(name), kind)
    validate(doc)
    broken = copy.deepcopy(doc)
    breaks(broken)
    with pytest.raises(jsonschema.ValidationError):
        validate(broken)


# --- the manifests against the Containerfile and the CLIs ----------------------------------------


def _user() -> tuple[int, int]:
    user = re.search(r"^USER (\d+):(\d+)$", _containerfile(), re.M)
    assert user, "the Containerfile has no USER uid:gid"
    return int(user.group(1)), int(user.group(2))


@pytest.mark.parametrize("name", ["session-job.yaml", "raycluster.yaml"])
def test_pods_run_as_the_image_user_read_only(name: str) -> None:
    uid, gid = _user()
    for doc in _load(name):
        if doc["kind"] == "PersistentVolumeClaim":
            continue
        for pod in _pod_specs(doc):
            context = pod["securityContext"]
            assert context["runAsNonRoot"] is True
            assert (context["runAsUser"], context["runAsGroup"], context["fsGroup"]) == (uid, gid, gid)
            volumes = {v["name"]: v for v in pod["volumes"]}
            for container in pod["containers"]:
                sec = container["securityContext"]
                assert sec["runAsNonRoot"] is True and sec["runAsUser"] == uid
                assert sec["readOnlyRootFilesystem"] is True
                assert sec["allowPrivilegeEscalation"] is False
                assert sec["capabilities"] == {"drop": ["ALL"]}
                assert container["resources"]["requests"] and container["resources"]["limits"]
                mounts = {m["mountPath"]: volumes[m["name"]] for m in container["volumeMounts"]}
                assert "/data" in mounts  # the image's state: run folders, the sweep's folder
                assert "emptyDir" in mounts["/tmp"]  # Python's and Ray's temporary files


def test_the_job_is_one_session_of_the_default_image() -> None:
    docs = _load("session-job.yaml")
    job = _one(docs, "Job")
    pod = job["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["image"] == SESSION_IMAGE
    # no `command`: the image's ENTRYPOINT, the session CLI on the image's config
    assert "command" not in container
    entrypoint = re.search(r"^ENTRYPOINT (\[.*\])$", _containerfile(), re.M)
    assert entrypoint and json.loads(entrypoint.group(1))[:3] == ["python", "-m", "actors.main"]
    # its args are flags the CLI lists (`python -m actors.main --help`), and they parse
    parser = build_parser()
    flags = {opt for action in parser._actions for opt in action.option_strings}
    args = container["args"]
    assert [a for a in args if a.startswith("-") and a.split("=")[0] not in flags] == []
    parsed = parser.parse_args(args)
    # a restart must resume the session from its checkpoint, not start another
    assert not parsed.fresh and parsed.resume is None
    assert pod["restartPolicy"] == "OnFailure"
    assert job["spec"]["backoffLimit"] >= 1
    # the deadline a bit over the session; the grace period holds flatten-on-exit
    session_s = parsed.duration * 60
    assert session_s < job["spec"]["activeDeadlineSeconds"] <= 2 * session_s
    assert pod["terminationGracePeriodSeconds"] >= 2 * Config().session.flatten_timeout_s
    # the keys from a Secret that may be missing (a paper session never reads them)
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"] if "valueFrom" in e}
    assert all(ref["optional"] is True for ref in refs.values())
    # /data survives a new pod (the restart's resume): a claim of this file
    claims = {v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
    assert claims == {_one(docs, "PersistentVolumeClaim")["metadata"]["name"]}


def test_the_jobs_kill_switch_is_on_the_pod_not_on_the_claim() -> None:
    """Found by a container audit: the Job left the kill switch at the image's /data/kill.txt, on
    its PersistentVolumeClaim, so a session stopped by it (exit 0, the pod done) left the file for
    the next Job on the same claim, whose session stopped at once (`kill switch kill.txt was
    already there at the start`), and no pod was left to delete it from. The Job's effective
    session.kill_switch (live.toml, then its env), read from the image's working directory, lies
    on an emptyDir of the pod; the documented `kubectl exec ... touch` names it."""
    job = _one(_load("session-job.yaml"), "Job")
    pod = job["spec"]["template"]["spec"]
    [container] = pod["containers"]
    found = re.search(r"^ENTRYPOINT (\[.*\])$", _containerfile(), re.M)
    assert found, "the Containerfile has no ENTRYPOINT"
    entrypoint = json.loads(found.group(1))
    config_file = REPO / entrypoint[entrypoint.index("--config") + 1].removeprefix("/app/")
    env = {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
    switch = load(config_file, env=env).session.kill_switch
    workdir = re.findall(r"^WORKDIR (\S+)$", _containerfile(), re.M)[-1]
    path = PurePosixPath(workdir, switch)  # an absolute kill_switch stays itself
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {PurePosixPath(m["mountPath"]): volumes[m["name"]] for m in container["volumeMounts"]}
    holding = max((m for m in mounts if m in path.parents), key=lambda m: len(m.parts), default=None)
    assert holding is not None and "emptyDir" in mounts[holding], (path, holding)
    documented = [
        c[-1]
        for text in ((DEPLOY / "session-job.yaml").read_text(), _readme_section())
        for c in _commands(text, "kubectl exec job/btc-session -- touch")
    ]
    assert documented and set(documented) == {str(path)}, documented


def _lock_version(lock: Path, name: str) -> str:
    pin = re.search(rf"^{name}==(\S+)", lock.read_text(), re.M)
    assert pin, f"{name} is not pinned in {lock.name}"
    return pin.group(1)


def test_the_raycluster_runs_ray_start_in_the_sweep_image() -> None:
    docs = _load("raycluster.yaml")
    cluster = _one(docs, "RayCluster")
    assert cluster["spec"]["rayVersion"] == _lock_version(REPO / "requirements-sweep.lock", "ray")
    # the image's ENTRYPOINT is the session CLI: the Ray containers override `command`, and KubeRay
    # leaves it as written
    assert cluster["metadata"]["annotations"]["ray.io/overwrite-container-cmd"] == "true"
    for group, template in _templates(cluster):
        ray, *others = template["spec"]["containers"]
        assert others == [], group
        assert ray["image"] == SWEEP_IMAGE
        assert ray["command"][0] == "/bin/bash" and ray["command"][1] == "-c"
        assert "exec $KUBERAY_GEN_RAY_START_CMD" in ray["args"][-1]
        # probes of their own: KubeRay's defaults need wget and the dashboard, not in the image
        for probe in ("readinessProbe", "livenessProbe"):
            command = ray[probe]["exec"]["command"]
            if command[0] == "python":
                assert command[1] == "-c"
                compile(command[2], f"{group} {probe}", "exec")
                assert re.search(r"^import psutil\b", command[2])
                _lock_version(REPO / "requirements.lock", "psutil")
            else:
                assert command[:2] == ["ray", "health-check"], command
        env = {e["name"]: e for e in ray["env"]}
        assert env["RAY_AUTH_MODE"]["value"] == "token"
        assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"].get("optional") is not True
        mounts = {m["mountPath"] for m in ray["volumeMounts"]}
        assert {"/tmp", "/dev/shm", "/data"} <= mounts
    head = cluster["spec"]["headGroupSpec"]["template"]["spec"]
    claims = {
        v["persistentVolumeClaim"]["claimName"] for v in head["volumes"] if "persistentVolumeClaim" in v
    }
    assert claims == {_one(docs, "PersistentVolumeClaim")["metadata"]["name"]}


def test_the_images_are_the_containerfile_builds() -> None:
    containerfile = _containerfile()
    assert re.search(r"^ARG SWEEP=0$", containerfile, re.M)
    assert "requirements-sweep.lock" in containerfile and "--require-hashes" in containerfile
    section = _readme_section()
    builds = {}
    for text in (containerfile, section, *(p.read_text() for p in DEPLOY.glob("*.yaml"))):
        for command in _commands(text, "podman build"):
            tag = command[command.index("-t") + 1]
            sweep = "--build-arg" in command and command[command.index("--build-arg") + 1] == "SWEEP=1"
            assert builds.setdefault(tag, sweep) == sweep, tag
    assert builds.get(SWEEP_IMAGE) is True and builds.get(SESSION_IMAGE) is False, builds
    images = {
        c["image"]
        for name in ("session-job.yaml", "raycluster.yaml")
        for d in _load(name)
        for c in (_containers(d) if d["kind"] != "PersistentVolumeClaim" else [])
    }
    assert images == {SESSION_IMAGE, SWEEP_IMAGE}


def test_the_documented_sweep_command_is_one_tools_sweep_takes() -> None:
    from tools.sweep.__main__ import parser

    cluster_doc = (DEPLOY / "raycluster.yaml").read_text()
    commands = _commands(cluster_doc, "python -m tools.sweep") + _commands(
        _readme_section(), "python -m tools.sweep"
    )
    assert len(commands) >= 2
    head = _one(_load("raycluster.yaml"), "RayCluster")["spec"]["headGroupSpec"]["template"]["spec"]
    mounts = {m["mountPath"] for m in head["containers"][0]["volumeMounts"]}
    for command in commands:
        at = command.index("tools.sweep")
        args = parser().parse_args(command[at + 1 :])
        # the spec is the image's copy of config/ (COPY config ./config, WORKDIR /app)
        assert args.spec.startswith("/app/config/") and (REPO / args.spec.removeprefix("/app/")).is_file()
        assert args.address == "auto"
        # the sweep's folder and its data on the head's volume
        assert any(args.out.startswith(m + "/") for m in mounts if m == "/data"), args.out
        assert all(d.startswith("/data/") for d in args.data), args.data


def test_the_key_pair_comes_as_files_of_a_secret_made_from_files() -> None:
    """Found by an audit: README and the Job's header said `kubectl create secret ...
    --from-literal=BITUNIX_API_SECRET=...`, the secret in the shell's history and the process
    list, and the Job put the key pair in variables. The recipe makes the Secret from files
    (`--from-file`, no value on a command line), and the Job mounts it, the key pair named by the
    `_FILE` variables actors/secrets.py reads: each names the file of its key in the Secret's
    volume, which may be missing (optional, as a paper session never reads them)."""
    job = _one(_load("session-job.yaml"), "Job")
    pod = job["spec"]["template"]["spec"]
    [container] = pod["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert not {secrets.API_KEY, secrets.API_SECRET} & set(env)  # never as variables
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {PurePosixPath(m["mountPath"]): m for m in container["volumeMounts"]}
    for name in (secrets.API_KEY, secrets.API_SECRET):
        path = PurePosixPath(env[name + secrets.FILE_SUFFIX]["value"])
        mount = mounts[path.parent]
        assert mount.get("readOnly") is True
        volume = volumes[mount["name"]]["secret"]
        assert volume["optional"] is True and "items" not in volume  # every key, by its name
        assert path.name == name
        secret_name = volume["secretName"]
    # the recipe: a Secret of that name, from files named as its keys; no value on a command line
    section = _readme_section()
    header = (DEPLOY / "session-job.yaml").read_text(encoding="utf-8")
    for name, text in (("README", section), ("session-job.yaml", header)):
        made = rf"kubectl create secret generic {secret_name} \\\n[# ]*--from-file=btc-secrets/ "
        assert re.search(made, text), name
        for key in (secrets.API_KEY, secrets.API_SECRET, secrets.STATE_KEY):
            assert f"> btc-secrets/{key}" in text, (name, key)
    for name in ("README.md", "deploy/session-job.yaml", "deploy/raycluster.yaml", "docs/RUNBOOK.md"):
        assert "--from-literal=" not in (REPO / name).read_text(encoding="utf-8"), name
