"""deploy/ agrees with the code: every YAML parses; images, commands and environment variables match.

Nothing is built, pulled or started: no container engine and no network. The CLI is the source of
truth for maskbatch flags, `dask scheduler --help` / `dask worker --help` for Dask's.
"""

from __future__ import annotations

import argparse
import ast
import functools
import importlib
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

import maskbatch
from maskbatch.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
COMPOSE = DEPLOY / "docker-compose.yml"
K8S = DEPLOY / "kubernetes"
README = DEPLOY / "README.md"
LOCAL_ONLY = {"wheels", "data"}  # the user's wheel cache and job data, never part of the repo

VERSION = maskbatch.__version__
SUBCOMMANDS = {"extract", "train", "predict", "evaluate"}
SHELL_OPERATOR = re.compile(r"^[();<>|&]+$")
ENV_NAME = re.compile(r"\b(?:DASK|MASKBATCH|OMP|OPENBLAS|MKL)_[A-Z0-9_]*[A-Z0-9]\b")
# set by the Dask Kubernetes operator in worker pods, consumed by `--name $(DASK_WORKER_NAME)`
OPERATOR_PROVIDED = {"DASK_WORKER_NAME"}


def _yaml_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yml", ".yaml")
                  and p.relative_to(DEPLOY).parts[0] not in LOCAL_ONLY)


def _load_all(path: Path) -> list:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def _deploy_texts() -> dict[str, str]:
    files = [DOCKERFILE, README, *_yaml_files()]
    return {str(p.relative_to(ROOT)): p.read_text() for p in files}


# --------------------------------------------------------------------------- command extraction

def _logical_lines(text: str) -> Iterator[str]:
    """Shell lines with backslash continuations joined."""
    yield from text.replace("\\\n", " ").splitlines()


def _shell_tokens(line: str) -> list[str]:
    lex = shlex.shlex(line, posix=True, punctuation_chars=True)
    lex.whitespace_split = True
    return list(lex)


def _commands_in_tokens(tokens: list[str]) -> Iterator[tuple[str, list[str]]]:
    """("maskbatch" | "dask scheduler" | "dask worker", argv after it) for each command found."""
    for i, tok in enumerate(tokens):
        nxt = tokens[i + 1] if i + 1 < len(tokens) else ""
        at_command = i == 0 or bool(SHELL_OPERATOR.match(tokens[i - 1]))
        if tok == "maskbatch" and (at_command or nxt in SUBCOMMANDS or nxt.startswith("-")):
            kind, start = "maskbatch", i + 1
        elif tok == "dask" and nxt in ("scheduler", "worker"):
            kind, start = f"dask {nxt}", i + 2
        elif tok in ("dask-scheduler", "dask-worker"):
            kind, start = tok.replace("-", " "), i + 1
        else:
            continue
        end = start
        while end < len(tokens) and not SHELL_OPERATOR.match(tokens[end]):
            end += 1
        yield kind, tokens[start:end]


def _commands_in_shell(text: str) -> list[tuple[str, list[str]]]:
    found = []
    for line in _logical_lines(text):
        found.extend(_commands_in_tokens(_shell_tokens(line)))
    return found


def _commands_in_yaml(node: object) -> list[tuple[str, list[str]]]:
    """Commands of every `command`/`args` pair (k8s containers, compose services)."""
    found: list[tuple[str, list[str]]] = []
    if isinstance(node, dict):
        argv: list[str] = []
        for key in ("command", "args"):
            value = node.get(key)
            if isinstance(value, str):
                argv += shlex.split(value)
            elif isinstance(value, list):
                argv += [str(v) for v in value]
        if argv:
            found.extend(_commands_in_tokens(argv))
            for item in argv:  # e.g. ["sh", "-c", "maskbatch predict ..."]
                if " " in item:
                    found.extend(_commands_in_shell(item))
        for value in node.values():
            found.extend(_commands_in_yaml(value))
    elif isinstance(node, list):
        for value in node:
            found.extend(_commands_in_yaml(value))
    return found


def _code_blocks(markdown: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced code block."""
    return [(m.group(1).strip().lower(), m.group(2))
            for m in re.finditer(r"^```([^\n]*)\n(.*?)^```", markdown, re.M | re.S)]


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuations joined and comments dropped."""
    lines = [ln for ln in DOCKERFILE.read_text().splitlines() if not ln.lstrip().startswith("#")]
    joined = "\n".join(lines).replace("\\\n", " ")
    out = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _dockerfile_args() -> dict[str, str]:
    """Build arguments (ARG NAME=default; NAME alone gives "")."""
    return dict((rest.split("=", 1) + [""])[:2] for word, rest in _dockerfile_instructions()
                if word == "ARG")


def _dockerfile_commands() -> list[tuple[str, list[str]]]:
    found = []
    for word, rest in _dockerfile_instructions():
        if word in ("RUN", "CMD", "ENTRYPOINT"):
            if rest.startswith("["):
                found.extend(_commands_in_tokens(yaml.safe_load(rest)))
            else:
                found.extend(_commands_in_shell(rest))
    return found


def _all_commands() -> dict[str, list[tuple[str, list[str]]]]:
    by_file: dict[str, list[tuple[str, list[str]]]] = {}
    for path in _yaml_files():
        by_file[str(path.relative_to(ROOT))] = [
            c for doc in _load_all(path) for c in _commands_in_yaml(doc)]
    by_file[str(DOCKERFILE.relative_to(ROOT))] = _dockerfile_commands()
    readme = []
    for lang, body in _code_blocks(README.read_text()):
        if lang not in ("python", "py", "yaml", "yml", "json"):
            readme.extend(_commands_in_shell(body))
    by_file[str(README.relative_to(ROOT))] = readme
    return by_file


def _maskbatch_flags(subcommand: str | None) -> set[str]:
    """Option strings of `maskbatch` (and of one subcommand), exactly as the CLI defines them."""
    parser = build_parser()
    flags = set(parser._option_string_actions)
    if subcommand:
        (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        flags |= set(sub.choices[subcommand]._option_string_actions)
    return flags


# --------------------------------------------------------------------------- dask's own flags

def _dask_cli(*args: str) -> list[str]:
    exe = Path(sys.executable).with_name("dask")
    if exe.exists():
        return [str(exe), *args]
    return [sys.executable, "-m", "dask", *args]


@functools.cache
def _dask_flags(sub: str) -> frozenset[str]:
    """Every option name `dask <sub> --help` lists."""
    out = subprocess.run(_dask_cli(sub, "--help"), capture_output=True, text=True, timeout=60,
                         cwd=ROOT, check=True).stdout
    flags = set()
    for line in out.splitlines():
        m = re.match(r"^\s{2}(-[^\s,]+(?:(?:,\s+|\s+/\s+)-[^\s,]+)*)", line)
        if m:
            flags.update(re.findall(r"--?[A-Za-z][\w-]*", m.group(1)))
    assert "--help" in flags and len(flags) > 10, f"could not read `dask {sub} --help`:\n{out}"
    return frozenset(flags)


# --------------------------------------------------------------------------- YAML

@pytest.mark.parametrize("path", _yaml_files(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_yaml_file_parses(path: Path) -> None:
    assert _load_all(path), f"{path} holds no YAML document"


def test_deploy_has_the_expected_files() -> None:
    for path in (DOCKERFILE, DEPLOY / ".dockerignore", COMPOSE, README,
                 K8S / "daskcluster.yaml", K8S / "daskjob.yaml"):
        assert path.is_file(), f"missing {path.relative_to(ROOT)}"


# --------------------------------------------------------------------------- one image, one version

def _compose() -> dict:
    (doc,) = _load_all(COMPOSE)
    return doc


def _k8s_containers() -> list[tuple[str, str, dict]]:
    """(manifest file, role, container) for every container in the operator manifests."""
    found = []
    for path in sorted(K8S.glob("*.y*ml")):
        for doc in _load_all(path):
            if doc.get("kind") not in ("DaskCluster", "DaskJob"):
                continue  # e.g. a DaskAutoscaler or a Secret: no containers of ours
            spec = doc["spec"]
            clusters = [spec] if doc["kind"] == "DaskCluster" else [spec["cluster"]["spec"]]
            if doc["kind"] == "DaskJob":
                found += [(path.name, "job", c) for c in spec["job"]["spec"]["containers"]]
            for cluster in clusters:
                for role in ("scheduler", "worker"):
                    found += [(path.name, role, c) for c in cluster[role]["spec"]["containers"]]
    return found


def test_compose_and_kubernetes_use_one_image_tagged_with_the_package_version() -> None:
    services = _compose()["services"]
    assert {"scheduler", "worker", "job"} <= set(services)
    images = {name: services[name].get("image") for name in ("scheduler", "worker", "job")}
    assert len(set(images.values())) == 1 and None not in images.values(), images
    image = images["scheduler"]
    k8s_images = {(f, role): c["image"] for f, role, c in _k8s_containers()}
    assert {("daskcluster.yaml", "scheduler"), ("daskcluster.yaml", "worker"),
            ("daskjob.yaml", "job"), ("daskjob.yaml", "worker")} <= set(k8s_images)
    assert set(k8s_images.values()) == {image}, k8s_images
    assert image.rsplit(":", 1)[1] == VERSION, f"image {image} is not tagged {VERSION}"


def test_the_image_installs_the_same_version_the_manifests_name() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'^version\s*=\s*"([^"]+)"', pyproject, re.M).group(1) == VERSION
    args = _dockerfile_args()
    assert args["MASKBATCH_VERSION"] == VERSION
    build = _compose()["services"]["scheduler"]["build"]
    assert str(build["args"]["MASKBATCH_VERSION"]) == VERSION
    assert (COMPOSE.parent / build["context"] / build.get("dockerfile", "Dockerfile")).resolve() \
        == DOCKERFILE.resolve()


# --------------------------------------------------------------------------- commands and flags

def test_commands_are_found_everywhere_they_are_expected() -> None:
    commands = _all_commands()
    for name in ("deploy/docker-compose.yml", "deploy/kubernetes/daskjob.yaml", "deploy/README.md"):
        kinds = [kind for kind, _ in commands[name]]
        assert "dask worker" in kinds and "dask scheduler" in kinds, (name, kinds)
        assert any(kind == "maskbatch" and argv[:1] == ["predict"]
                   for kind, argv in commands[name]), (name, commands[name])
    assert any(kind == "dask worker" for kind, _ in commands["deploy/Dockerfile"])


def test_every_maskbatch_command_parses_with_the_cli() -> None:
    parsed = 0
    for where, commands in _all_commands().items():
        for kind, argv in commands:
            if kind != "maskbatch":
                continue
            try:
                build_parser().parse_args(argv)
            except SystemExit as exc:  # argparse: 2 = bad flags; 0 = --version / --help
                assert exc.code == 0 and {"--version", "--help", "-h"} & set(argv), \
                    f"{where}: `maskbatch {shlex.join(argv)}` does not parse (exit {exc.code})"
            # argparse accepts abbreviations (--sched); the files must spell flags out in full
            known = _maskbatch_flags(argv[0] if argv and argv[0] in SUBCOMMANDS else None)
            for token in argv:
                if token.startswith("--"):
                    flag = token.split("=", 1)[0]
                    assert flag in known, f"{where}: maskbatch has no option {flag} (abbreviated?)"
            parsed += 1
    assert parsed >= 5


def test_every_dask_flag_is_one_dask_accepts() -> None:
    checked = 0
    for where, commands in _all_commands().items():
        for kind, argv in commands:
            if not kind.startswith("dask "):
                continue
            assert kind in ("dask scheduler", "dask worker")
            known = _dask_flags(kind.split()[1])
            for token in argv:
                if re.match(r"^--?[A-Za-z]", token):
                    flag = token.split("=", 1)[0]
                    assert flag in known, f"{where}: `{kind}` has no option {flag}"
                    checked += 1
    assert checked >= 10


def test_workers_are_single_threaded_processes_everywhere() -> None:
    for where, commands in _all_commands().items():
        for kind, argv in commands:
            if kind == "dask worker":
                assert "--nthreads" in argv, f"{where}: `dask worker {shlex.join(argv)}`"
                assert argv[argv.index("--nthreads") + 1] == "1", where
                if "--nworkers" in argv and where != "deploy/README.md":
                    assert argv[argv.index("--nworkers") + 1] == "1", where


# --------------------------------------------------------------------------- environment variables

@functools.cache
def _code_text() -> str:
    return "\n".join(p.read_text() for p in sorted((ROOT / "maskbatch").rglob("*.py")))


def _is_dask_config_variable(name: str) -> bool:
    """DASK_A__B__C names an existing Dask setting a.b.c (`_` and `-` are the same to Dask)."""
    import dask
    import distributed  # noqa: F401 - registers distributed's settings

    if not name.startswith("DASK_") or "__" not in name:
        return False
    node: object = dask.config.config
    for part in name[len("DASK_"):].lower().split("__"):
        if not isinstance(node, dict):
            return False
        key = next((k for k in (part, part.replace("_", "-")) if k in node), None)
        if key is None:
            return False
        node = node[key]
    return True


def _read_by_dask(name: str) -> bool:
    """Dask's own variables, e.g. DASK_CONFIG (the folder of its YAML files): in dask.config."""
    import dask.config

    return f'"{name}"' in Path(dask.config.__file__).read_text()


def test_environment_variables_are_spelled_as_the_code_reads_them() -> None:
    used: dict[str, set[str]] = {}
    for where, text in _deploy_texts().items():
        for name in ENV_NAME.findall(text):
            used.setdefault(name, set()).add(where)
    for name in ("DASK_SCHEDULER_ADDRESS", "OMP_NUM_THREADS", "MASKBATCH_DETECTOR_DIR"):
        assert name in used, f"deploy/ never mentions {name}"
        assert re.search(rf"\b{name}\b", _code_text()), f"maskbatch/ does not read {name}"
    build_args = set(_dockerfile_args())  # build time only, e.g. MASKBATCH_VERSION
    for name, where in sorted(used.items()):
        known = (name in build_args or name in OPERATOR_PROVIDED or _read_by_dask(name)
                 or re.search(rf"[\"']{name}[\"']", _code_text())
                 or _is_dask_config_variable(name))
        assert known, f"{name} (in {sorted(where)}) is read neither by maskbatch nor by Dask"


def test_thread_variables_are_pinned_in_image_compose_and_workers() -> None:
    envs = [rest for word, rest in _dockerfile_instructions() if word == "ENV"]
    assert re.search(r"\bOMP_NUM_THREADS=1\b", " ".join(envs))
    for name in ("scheduler", "worker", "job"):
        assert str(_compose()["services"][name]["environment"]["OMP_NUM_THREADS"]) == "1"
    for where, role, container in _k8s_containers():
        env = {e["name"]: e.get("value") for e in container.get("env", [])}
        assert env.get("OMP_NUM_THREADS") == "1", (where, role)
        # the operator appends DASK_SCHEDULER_ADDRESS itself; a second copy would shadow it
        assert "DASK_SCHEDULER_ADDRESS" not in env, (where, role)


# --------------------------------------------------------------------------- compose

def test_compose_runs_scheduler_workers_and_a_one_shot_job() -> None:
    services = _compose()["services"]
    sched, worker, job = services["scheduler"], services["worker"], services["job"]
    assert sched["command"][:2] == ["dask", "scheduler"]
    assert {"8786:8786", "8787:8787"} <= set(sched["ports"])
    assert worker["command"][:3] == ["dask", "worker", "tcp://scheduler:8786"]
    assert "--memory-limit" in worker["command"]
    assert int(worker["deploy"]["replicas"]) >= 1
    assert worker["deploy"]["resources"]["limits"]["memory"]
    argv = job["command"]
    assert argv[:3] == ["maskbatch", "predict", "/data/images"]
    args = build_parser().parse_args(argv[1:])
    assert (args.out, args.scheduler) == ("/data/out", "tcp://scheduler:8786")
    assert "./data:/data" in job["volumes"]
    _assert_workers_read_photos_and_write_out(worker, job, args)
    assert "scheduler" in job["depends_on"]
    assert job.get("restart", "no") == "no"


def _mounts(service: dict) -> dict[str, tuple[str, bool]]:
    """A compose service's bind mounts: container path -> (host path, read-only)."""
    mounts = {}
    for volume in service.get("volumes", []):
        host, path, *mode = volume.split(":")
        mounts[path] = (host, "ro" in mode)
    return mounts


def _writable(mounts: dict[str, tuple[str, bool]], path: str) -> bool:
    """Whether `path` lies under a read-write mount (the deepest mount above it decides)."""
    above = [p for p in mounts if path == p or path.startswith(p.rstrip("/") + "/")]
    return bool(above) and not mounts[max(above, key=len)][1]


def _assert_workers_read_photos_and_write_out(worker: dict, job: dict, args) -> None:
    """Workers read the photos and write OUT/parts themselves (issue 39: the shipped `:ro` mount
    gave every task a PermissionError): --out is writable for them at the job's path, as the
    job's user (the parts they write are the job's files)."""
    mounts, job_mounts = _mounts(worker), _mounts(job)
    assert any(args.images == p or args.images.startswith(p + "/") for p in mounts), mounts
    assert _writable(mounts, args.out) and _writable(job_mounts, args.out), mounts
    assert not _writable(mounts, args.images)  # the photos stay read-only for workers
    assert worker.get("user") == job.get("user"), "workers write --out as the job's user"


def test_multi_host_docker_run_workers_can_write_out() -> None:
    """The multi-host `docker run` example mounted the whole data folder `:ro`."""
    runs = [line for line in _logical_lines(README.read_text())
            if line.startswith("docker run") and " dask worker " in line]
    assert runs
    for line in runs:
        argv = shlex.split(line)
        volumes = [argv[i + 1] for i, a in enumerate(argv) if a == "-v"]
        mounts = _mounts({"volumes": volumes})
        assert _writable(mounts, "/data/out") and not _writable(mounts, "/data/images"), line


def test_daskjob_says_workers_write_out() -> None:
    text = (K8S / "daskjob.yaml").read_text()
    assert "only the job pod needs write access" not in text
    assert "write access under --out" in text


def test_dashboard_dependency_is_in_the_package_and_the_image() -> None:
    """bokeh was in no dependency nor the image: the dashboard said "Dask needs bokeh"."""
    project = (ROOT / "pyproject.toml").read_text()
    deps = project.split("\ndependencies = [", 1)[1].split("\n]", 1)[0]  # the required ones
    assert re.search(r'^\s*"bokeh>=3\.1', deps, re.M), deps
    assert 'python -c "import bokeh' in DOCKERFILE.read_text()


# --------------------------------------------------------------------------- kubernetes

def test_kubernetes_manifests_are_dask_operator_resources() -> None:
    kinds = {}
    for path in sorted(K8S.glob("*.y*ml")):
        for doc in _load_all(path):
            assert doc["apiVersion"] == "kubernetes.dask.org/v1", path
            kinds[doc["kind"]] = doc
    assert {"DaskCluster", "DaskJob"} <= set(kinds)
    for kind, doc in kinds.items():
        cluster = doc["spec"] if kind == "DaskCluster" else doc["spec"]["cluster"]["spec"]
        service = cluster["scheduler"]["service"]
        # the operator names the job's cluster after the DaskJob
        assert service["selector"]["dask.org/cluster-name"] == doc["metadata"]["name"], kind
        assert {p["port"] for p in service["ports"]} >= {8786, 8787}, kind
        assert int(cluster["worker"]["replicas"]) >= 1


def test_kubernetes_containers_have_resources_and_run_as_non_root() -> None:
    for where, role, container in _k8s_containers():
        resources = container["resources"]
        for key in ("cpu", "memory"):
            assert resources["requests"][key] and resources["limits"][key], (where, role, key)
    for path in sorted(K8S.glob("*.y*ml")):
        text = path.read_text()
        assert text.count("runAsNonRoot: true") >= (3 if "DaskJob" in text else 2), path


def test_daskjob_predicts_from_and_to_object_storage_via_the_operator_address() -> None:
    (doc,) = _load_all(K8S / "daskjob.yaml")
    (container,) = doc["spec"]["job"]["spec"]["containers"]
    argv = container.get("command", []) + container.get("args", [])
    assert argv[:2] == ["maskbatch", "predict"]
    args = build_parser().parse_args(argv[1:])
    assert args.scheduler is None  # taken from DASK_SCHEDULER_ADDRESS, set by the operator
    assert "DASK_SCHEDULER_ADDRESS" in (K8S / "daskjob.yaml").read_text()
    assert "DASK_SCHEDULER_ADDRESS" in (ROOT / "maskbatch" / "config.py").read_text()
    # the job pod has no shared volume: photos and outputs live in the bucket
    assert args.images.startswith("s3://") and args.out.startswith("s3://")
    assert args.resume  # a restarted job pod finishes the run instead of failing on its --out


# --------------------------------------------------------------------------- Dockerfile

def test_dockerfile_is_multi_stage_offline_and_inference_only() -> None:
    instructions = _dockerfile_instructions()
    froms = [rest for word, rest in instructions if word == "FROM"]
    assert len(froms) >= 2, "expected a multi-stage build"
    args = _dockerfile_args()
    assert args.get("PYTHON_IMAGE") == "python:3.11-slim"
    assert all(f.split()[0] == "${PYTHON_IMAGE}" for f in froms)
    installs = [rest for word, rest in instructions if word == "RUN" and "pip install" in rest]
    assert installs
    for run in installs:
        assert "--no-index" in run and "--find-links" in run, run
        assert not re.search(r"tensorflow|tf2onnx|\[train", run, re.I), run
        assert "${EXTRA_PACKAGES}" in run  # optional fsspec back-ends, e.g. s3fs
    assert "EXTRA_PACKAGES" in args
    assert any(word == "COPY" and rest.split()[0].rstrip("/") == "wheels"
               for word, rest in instructions)
    ignore = (DEPLOY / ".dockerignore").read_text().split()
    assert "*" in ignore and "!wheels/" in ignore


def test_dockerfile_runs_as_non_root_and_verifies_models_as_that_user() -> None:
    instructions = _dockerfile_instructions()
    users = [i for i, (word, _) in enumerate(instructions) if word == "USER"]
    assert users, "no USER: the image would run as root"
    last_user = users[-1]
    user = instructions[last_user][1].split(":")[0]
    assert user not in ("root", "0"), user
    verify = [(i, rest) for i, (word, rest) in enumerate(instructions)
              if word == "RUN" and "from maskbatch" in rest]
    named = set()
    for i, run in verify:
        assert i > last_user, f"verification runs as root: {run}"
        for module, func in re.findall(r"from\s+([\w.]+)\s+import\s+(\w+)", run):
            assert callable(getattr(importlib.import_module(module), func)), (module, func)
            named.add(func)
    assert {"read_model", "locate_weights"} <= named
    cmd = [rest for word, rest in instructions if word == "CMD"]
    assert cmd and yaml.safe_load(cmd[-1])[:2] == ["dask", "worker"]


def test_image_preloads_tcmalloc_from_the_offline_cache() -> None:
    """Flat worker memory (docs/benchmarks.md): tcmalloc's .deb from deploy/debs/, preloaded into
    every process of the image, and the build fails when it is not."""
    instructions = _dockerfile_instructions()
    words = [word for word, _ in instructions]
    env = [i for i, (word, rest) in enumerate(instructions)
           if word == "ENV" and "LD_PRELOAD=libtcmalloc_minimal.so.4" in rest]
    install = [i for i, (word, rest) in enumerate(instructions)
               if word == "RUN" and "dpkg -i /debs/" in rest]
    check = [i for i, (word, rest) in enumerate(instructions)
             if word == "RUN" and "libtcmalloc" in rest and "/proc/self/maps" in rest]
    assert install and env and check and install[0] < env[0] < check[0]
    assert words.index("USER") > install[0], "dpkg needs root"
    assert ["debs/", "/debs/"] in [rest.split() for word, rest in instructions if word == "COPY"]
    assert {"!debs/", "!debs/*.deb"} <= set((DEPLOY / ".dockerignore").read_text().split())
    assert "apt-get download" in DOCKERFILE.read_text()  # how to fill deploy/debs/


# --------------------------------------------------------------------------- README

def test_readme_python_blocks_compile_and_import_what_exists() -> None:
    blocks = [body for lang, body in _code_blocks(README.read_text()) if lang in ("python", "py")]
    assert blocks
    for body in blocks:
        tree = ast.parse(body)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("maskbatch"):
                module = importlib.import_module(node.module)
                for alias in node.names:
                    assert hasattr(module, alias.name), f"{node.module}.{alias.name}"


def test_readme_covers_the_promised_topics() -> None:
    text = README.read_text()
    for needle in ("docker compose", "DaskJob", "DaskCluster", "srun", "dask-jobqueue",
                   "--resume", "--tls-ca-file", "Security", "docs/benchmarks.md",
                   "--nthreads 1", "same maskbatch version"):
        assert needle in text, needle


def test_image_dask_config_keeps_glibc_malloc_defaults_in_workers() -> None:
    """deploy/dask.yaml reaches /etc/dask in the image and removes the nanny's malloc setting."""
    from maskbatch.runtime.cluster import NANNY_ENV

    config = yaml.safe_load((DEPLOY / "dask.yaml").read_text())
    environ = config["distributed"]["nanny"]["pre-spawn-environ"]
    assert environ == {"MALLOC_TRIM_THRESHOLD_": None}
    assert NANNY_ENV == {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}
    copies = [rest.split() for word, rest in _dockerfile_instructions() if word == "COPY"]
    assert ["dask.yaml", "/etc/dask/maskbatch.yaml"] in copies
    assert "!dask.yaml" in (DEPLOY / ".dockerignore").read_text().split()


# --------------------------------------------------------------------------- issue 15 fixes

def _bash_lines(text: str) -> list[str]:
    return [line for lang, body in _code_blocks(text) if lang in ("bash", "sh", "")
            for line in _logical_lines(body)]


def test_readme_image_recipe_fills_every_folder_the_dockerfile_copies() -> None:
    """A user who follows deploy/README's build recipe gets every `COPY` source: the committed
    files are in the repository, the rest (wheel cache, tcmalloc's .deb) a README line writes."""
    lines = _bash_lines(README.read_text())
    build = next(i for i, line in enumerate(lines) if line.startswith("docker build"))
    recipe = lines[:build]
    sources = [rest.split()[0] for word, rest in _dockerfile_instructions()
               if word == "COPY" and not rest.startswith("--from")]
    assert {"wheels/", "debs/", "dask.yaml"} <= set(sources)
    for src in sources:
        if (DEPLOY / src).exists() and src.rstrip("/") not in LOCAL_ONLY | {"debs"}:
            continue  # committed
        folder = f"deploy/{src.rstrip('/')}"
        writers = [line for line in recipe if folder in line and "docker run" in line]
        assert writers, f"deploy/README's recipe never fills {folder} (COPY {src} would fail)"
    debs = [line for line in recipe if "deploy/debs" in line and "docker run" in line]
    assert any("apt-get download" in line and "libtcmalloc-minimal4" in line for line in debs)


def test_renaming_a_manifest_renames_its_scheduler_service_selector(tmp_path: Path) -> None:
    """The selector must follow the name: deploy/README's rename recipe (real sed) changes one
    line, and the scheduler service then still selects the renamed cluster's scheduler."""
    recipe = [line for line in _bash_lines(README.read_text())
              if line.startswith("sed -i 's/name: &")]
    assert len(recipe) == 2, recipe
    for path in sorted(K8S.glob("*.y*ml")):
        selectors = [line.split("#")[0].split(":", 1)[1].strip()
                     for line in path.read_text().splitlines()
                     if line.strip().startswith("dask.org/cluster-name:")]
        assert selectors and all(s.startswith("*") for s in selectors), \
            f"{path.name}: the selector hard-codes the cluster name: {selectors}"
    copy = tmp_path / "my-k8s"
    copy.mkdir()
    for path in K8S.glob("*.y*ml"):
        (copy / path.name).write_text(path.read_text())
    for line in recipe:
        argv = shlex.split(line.replace("my-k8s/", f"{copy}/"))
        subprocess.run(argv, check=True, timeout=30)
    for path in sorted(copy.glob("*.y*ml")):
        doc = _load_all(path)[0]
        cluster = doc["spec"] if doc["kind"] == "DaskCluster" else doc["spec"]["cluster"]["spec"]
        selector = cluster["scheduler"]["service"]["selector"]
        assert doc["metadata"]["name"] in ("maskbatch-big", "predict-run-2"), path.name
        assert selector["dask.org/cluster-name"] == doc["metadata"]["name"], path.name
