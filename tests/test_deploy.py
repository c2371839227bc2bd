"""Checks of the deployment configurations in ``deploy/``: fast, offline, no job submitted.

What the code relies on is checked here: GPU workers advertise ``GPU=1`` (the engine pins Mesmer
inference to that resource), the scheduler listens on 8786 under the address the driver is
given, the SLURM configuration yields a job script through dask-jobqueue, and every
``codexdask segment`` command and config file in the docs is accepted by the real CLI.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path, PurePosixPath
from types import ModuleType
from typing import Any

import dask
import pytest
import yaml
from distributed.comm import parse_address, parse_host_port

from codexdask.cli import build_parser, segment_config
from codexdask.config import SegmentConfig, load_yaml, make_config

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
SCHEDULER_PORT = 8786
ADDRESS_RE = re.compile(r"tcp://[A-Za-z0-9][A-Za-z0-9.\-]*:\d+")


def _yaml_docs(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def _by_kind(path: Path) -> dict[str, list[dict[str, Any]]]:
    kinds: dict[str, list[dict[str, Any]]] = {}
    for doc in _yaml_docs(path):
        kinds.setdefault(doc["kind"], []).append(doc)
    return kinds


def _after(args: list[str], flag: str) -> str | None:
    """The value following ``flag`` in an argument list, else None."""
    return args[args.index(flag) + 1] if flag in args else None


def _parse_segment(argv: list[str]) -> Any:
    """``argv`` (starting at ``segment``) through the real CLI parser."""
    return build_parser().parse_args(argv)


def _run_slurm_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("run_slurm", DEPLOY / "slurm" / "run_slurm.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- every file parses --------------------------------------------------------------------------


def _config_files() -> list[Path]:
    return sorted(
        p for p in DEPLOY.rglob("*") if p.suffix in {".yaml", ".yml", ".json"} and p.is_file()
    )


def test_deploy_holds_the_expected_configuration_files() -> None:
    names = {p.relative_to(DEPLOY).as_posix() for p in _config_files()}
    assert {
        "local-gpu/segment-mesmer.yaml", "slurm/cluster.yaml", "kubernetes/daskcluster.yaml",
        "kubernetes/segment-job.yaml", "docker/compose.yaml",
    } <= names


@pytest.mark.parametrize("path", _config_files(), ids=lambda p: p.relative_to(DEPLOY).as_posix())
def test_every_yaml_and_json_file_parses_to_mappings(path: Path) -> None:
    if path.suffix == ".json":
        docs = [json.loads(path.read_text())]
    else:
        docs = _yaml_docs(path)
    assert docs, f"{path} is empty"
    assert all(isinstance(doc, dict) for doc in docs)


def test_segment_config_example_is_a_valid_segment_config() -> None:
    config = make_config(SegmentConfig, load_yaml(DEPLOY / "local-gpu" / "segment-mesmer.yaml"))
    assert config.backend == "mesmer"
    assert config.model_path is not None and PurePosixPath(config.model_path).is_absolute()
    assert config.pickle_compression == "zstd"
    # Cluster choice comes from the command line, not from the shared file.
    assert config.scheduler is None and config.gpus is False


# -- SLURM --------------------------------------------------------------------------------------


def _job_script(settings: dict[str, Any]) -> str:
    from dask_jobqueue import SLURMCluster

    with dask.config.set(settings):
        with SLURMCluster(scheduler_options={"dashboard_address": ":0"}) as cluster:
            return str(cluster.job_script())


def _worker_argv(script: str, module: str) -> list[str]:
    """The worker command line of a job script, after ``python -m MODULE``."""
    line = next(ln for ln in script.splitlines() if f"-m {module} " in ln)
    argv = shlex.split(line)
    return argv[argv.index(module) + 1:]


def test_slurm_job_script_requests_one_gpu_and_advertises_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from distributed.cli import dask_worker

    monkeypatch.chdir(tmp_path)  # dask-jobqueue creates the log directory here
    settings = _run_slurm_module().jobqueue_settings(DEPLOY / "slurm" / "cluster.yaml")
    script = _job_script(settings)
    header = [ln for ln in script.splitlines() if ln.startswith("#SBATCH")]
    assert "#SBATCH --gres=gpu:1" in header
    assert "#SBATCH -n 1" in header
    assert "#SBATCH --cpus-per-task=8" in header
    assert "#SBATCH --mem=64G" in header
    assert "#SBATCH -t 04:00:00" in header
    assert "codexdask doctor" in script  # each worker's log starts with its versions and weights
    argv = _worker_argv(script, "distributed.cli.dask_worker")
    assert "--nworkers" not in argv  # one process per job: one worker per GPU
    assert _after(argv, "--resources") == "GPU=1"
    assert _after(argv, "--nthreads") == "8"
    # The worker command line is accepted by `dask worker` itself (--lifetime etc. exist).
    ctx = dask_worker.main.make_context("dask worker", list(argv))
    assert ctx.params["resources"] == "GPU=1"
    # ... and its values parse (the click option takes any string; "3h50m" passed this far and
    # then stopped every worker at start-up, found by running the recipe on SLURM).
    from dask.utils import parse_timedelta

    assert parse_timedelta(ctx.params["lifetime"]) == 230 * 60
    assert parse_timedelta(ctx.params["lifetime_stagger"]) == 5 * 60


def test_slurm_dask_cuda_worker_alternative_yields_a_valid_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cuda_cli = pytest.importorskip("dask_cuda.cli")
    monkeypatch.chdir(tmp_path)
    settings = _run_slurm_module().jobqueue_settings(DEPLOY / "slurm" / "cluster.yaml")
    settings["jobqueue.slurm.worker-command"] = "dask_cuda.cli"
    settings["jobqueue.slurm.worker-extra-args"] = ["--resources", "GPU=1"]
    script = _job_script(settings)
    assert "#SBATCH --gres=gpu:1" in script
    argv = _worker_argv(script, "dask_cuda.cli")
    assert "--nanny" not in argv  # a flag of `dask worker` only
    ctx = cuda_cli.worker.make_context("dask cuda worker", list(argv))
    assert ctx.params["resources"] == "GPU=1"
    assert ctx.params["nthreads"] == 8
    assert not ctx.params["preload_argv"]  # every option was recognised


def test_slurm_workers_and_scheduler_speak_tls_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from distributed.cli import dask_worker
    from distributed.comm import parse_address

    pytest.importorskip("cryptography")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    run_slurm = _run_slurm_module()
    settings = run_slurm.jobqueue_settings(DEPLOY / "slurm" / "cluster.yaml")
    security = run_slurm.cluster_security(settings)
    assert security.require_encryption
    shared = tmp_path / "home" / ".codexdask" / "tls"
    assert shared.is_dir() and (shared.stat().st_mode & 0o777) == 0o700
    from dask_jobqueue import SLURMCluster

    with dask.config.set(settings), SLURMCluster(
        security=security, scheduler_options={"dashboard_address": ":0"}
    ) as cluster:
        assert parse_address(cluster.scheduler_address)[0] == "tls"
        argv = _worker_argv(str(cluster.job_script()), "distributed.cli.dask_worker")
        assert parse_address(argv[0])[0] == "tls"
        ctx = dask_worker.main.make_context("dask worker", list(argv))
        for option in ("tls_ca_file", "tls_cert", "tls_key"):
            path = Path(os.path.expanduser(ctx.params[option]))
            assert path.parent == shared and path.is_file(), option
            assert path.stat().st_mode & 0o077 == 0  # readable by the user only


def test_run_slurm_arguments_become_a_segment_config() -> None:
    run_slurm = _run_slurm_module()
    config_file = str(DEPLOY / "local-gpu" / "segment-mesmer.yaml")
    args = run_slurm.parse_args(["/s/slide.zarr", "--out", "/r", "--config", config_file,
                                 "--maximum", "8", "--resume"])
    assert (args.minimum, args.maximum) == (1, 8)
    segment_args = {k: v for k, v in vars(args).items() if k not in run_slurm.DRIVER_ARGS}
    config = segment_config(argparse.Namespace(**segment_args))
    assert config.backend == "mesmer" and config.resume is True


@pytest.mark.parametrize("argv", [
    ["s.zarr", "--out", "o", "--scheduler", "tcp://x:8786"],
    ["s.zarr", "--out", "o", "--gpus"],
    ["s.zarr", "--out", "o", "--minimum", "3", "--maximum", "2"],
])
def test_run_slurm_refuses_cluster_flags_and_bad_sizes(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as info:
        _run_slurm_module().parse_args(argv)
    assert info.value.code == 2


def test_jobqueue_settings_rejects_a_file_without_a_slurm_section(tmp_path: Path) -> None:
    from codexdask.errors import ConfigError

    bad = tmp_path / "cluster.yaml"
    bad.write_text("jobqueue:\n  pbs:\n    cores: 4\n")
    with pytest.raises(ConfigError, match="jobqueue: slurm:"):
        _run_slurm_module().jobqueue_settings(bad)


# -- Kubernetes ---------------------------------------------------------------------------------


def _k8s() -> dict[str, list[dict[str, Any]]]:
    kinds = _by_kind(DEPLOY / "kubernetes" / "daskcluster.yaml")
    for kind, docs in _by_kind(DEPLOY / "kubernetes" / "segment-job.yaml").items():
        kinds.setdefault(kind, []).extend(docs)
    return kinds


def _pod_specs(kinds: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    (cluster,) = kinds["DaskCluster"]
    pods = {
        "gpu-worker": cluster["spec"]["worker"]["spec"],
        "scheduler": cluster["spec"]["scheduler"]["spec"],
        "job": kinds["Job"][0]["spec"]["template"]["spec"],
    }
    for group in kinds["DaskWorkerGroup"]:
        pods[group["metadata"]["name"]] = group["spec"]["worker"]["spec"]
    return pods


def test_daskcluster_gpu_workers_advertise_gpu_and_cpu_workers_do_not() -> None:
    kinds = _k8s()
    (cluster,) = kinds["DaskCluster"]
    assert cluster["apiVersion"] == "kubernetes.dask.org/v1"
    (gpu,) = cluster["spec"]["worker"]["spec"]["containers"]
    assert gpu["args"][:2] == ["dask", "worker"]
    assert _after(gpu["args"], "--resources") == "GPU=1"
    assert _after(gpu["args"], "--name") == "$(DASK_WORKER_NAME)"
    assert int(gpu["resources"]["limits"]["nvidia.com/gpu"]) == 1
    (cpu_group,) = kinds["DaskWorkerGroup"]
    assert cpu_group["apiVersion"] == "kubernetes.dask.org/v1"
    assert cpu_group["spec"]["cluster"] == cluster["metadata"]["name"]
    for container in cpu_group["spec"]["worker"]["spec"]["containers"]:
        assert "--resources" not in container["args"]
        assert "nvidia.com/gpu" not in container.get("resources", {}).get("limits", {})


def test_scheduler_service_exposes_port_8786_of_the_scheduler_pod() -> None:
    (cluster,) = _k8s()["DaskCluster"]
    scheduler = cluster["spec"]["scheduler"]
    (container,) = scheduler["spec"]["containers"]
    assert container["args"][:2] == ["dask", "scheduler"]
    assert int(_after(container["args"], "--port") or 0) == SCHEDULER_PORT
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"tcp-comm": SCHEDULER_PORT, "http-dashboard": 8787}
    service = scheduler["service"]
    assert service["selector"] == {
        "dask.org/cluster-name": cluster["metadata"]["name"], "dask.org/component": "scheduler",
    }
    by_name = {p["name"]: p for p in service["ports"]}
    assert by_name["tcp-comm"]["port"] == SCHEDULER_PORT
    assert {p["targetPort"] for p in service["ports"]} <= set(ports)


def test_driver_job_uses_the_operator_service_address_and_shared_paths() -> None:
    kinds = _k8s()
    (cluster,) = kinds["DaskCluster"]
    (job,) = kinds["Job"]
    namespace = cluster["metadata"]["namespace"]
    assert job["metadata"]["namespace"] == namespace
    # The operator names the Service "<cluster>-scheduler".
    expected = (f"tcp://{cluster['metadata']['name']}-scheduler.{namespace}.svc.cluster.local:"
                f"{SCHEDULER_PORT}")
    pod = job["spec"]["template"]["spec"]
    (driver,) = pod["containers"]
    assert driver["args"][0] == "codexdask"
    args = _parse_segment(driver["args"][1:])
    assert args.scheduler == expected
    assert segment_config(args).scheduler == expected
    (wait,) = pod["initContainers"]
    assert wait["args"][-1] == expected
    mount = next(m["mountPath"] for m in driver["volumeMounts"] if m["name"] == "data")
    for path in (args.store, args.out, args.model_path):
        assert PurePosixPath(path).is_relative_to(mount), path


def test_every_pod_that_touches_data_mounts_the_same_shared_volume() -> None:
    kinds = _k8s()
    (pvc,) = kinds["PersistentVolumeClaim"]
    assert "ReadWriteMany" in pvc["spec"]["accessModes"]
    mounts = {}
    for name, pod in _pod_specs(kinds).items():
        if name == "scheduler":
            continue
        claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"]}
        for container in pod["containers"]:
            for mount in container["volumeMounts"]:
                assert claims[mount["name"]] == pvc["metadata"]["name"]
                mounts[name] = mount["mountPath"]
    assert set(mounts) >= {"gpu-worker", "job", "codexdask-cpu"}
    assert len(set(mounts.values())) == 1  # driver and workers see the same paths


def test_network_policy_admits_only_the_cluster_and_the_driver() -> None:
    kinds = _k8s()
    (cluster,) = kinds["DaskCluster"]
    (policy,) = kinds["NetworkPolicy"]
    name, namespace = cluster["metadata"]["name"], cluster["metadata"]["namespace"]
    assert policy["metadata"]["namespace"] == namespace
    spec = policy["spec"]
    assert spec["podSelector"] == {"matchLabels": {"dask.org/cluster-name": name}}
    assert spec["policyTypes"] == ["Ingress"]
    (rule,) = spec["ingress"]
    # Only pod selectors of this namespace: no ipBlock, no namespaceSelector, no open rule.
    assert rule["from"] and all(set(peer) == {"podSelector"} for peer in rule["from"])
    admitted = [peer["podSelector"]["matchLabels"] for peer in rule["from"]]
    (job,) = kinds["Job"]
    job_labels = job["spec"]["template"]["metadata"]["labels"]
    assert {"dask.org/cluster-name": name} in admitted
    assert any(labels.items() <= job_labels.items() for labels in admitted)


def test_job_init_container_returns_once_a_gpu_worker_is_connected() -> None:
    from distributed import LocalCluster

    (job,) = _k8s()["Job"]
    (wait,) = job["spec"]["template"]["spec"]["initContainers"]
    assert wait["args"][:2] == ["python", "-c"]
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, protocol="tcp",
                      resources={"GPU": 1}, dashboard_address=":0") as cluster:
        done = subprocess.run(
            [sys.executable, "-c", wait["args"][2], cluster.scheduler_address],
            capture_output=True, text=True, timeout=120,
        )
    assert done.returncode == 0, done.stderr


# -- Docker Compose -----------------------------------------------------------------------------


def _services() -> dict[str, dict[str, Any]]:
    (compose,) = _yaml_docs(DEPLOY / "docker" / "compose.yaml")
    return dict(compose["services"])


def _gpu_devices(service: dict[str, Any]) -> list[dict[str, Any]]:
    resources = service.get("deploy", {}).get("resources", {})
    return list(resources.get("reservations", {}).get("devices", []))


def _mount_target(volume: str) -> str:
    """Container path of a short-syntax volume ``SRC:DST[:ro|rw]`` (SRC may hold ``${X:-y}``)."""
    for mode in (":ro", ":rw"):
        volume = volume.removesuffix(mode)
    return volume.rsplit(":", 1)[1]


def test_compose_scheduler_stays_on_the_private_network() -> None:
    scheduler = _services()["scheduler"]
    assert scheduler["command"][:2] == ["dask", "scheduler"]
    assert int(_after(scheduler["command"], "--port") or 0) == SCHEDULER_PORT
    # A scheduler runs any code it is sent: 8786 is not published; the dashboard is, on loopback.
    assert not any(str(port).split(":")[-1] == str(SCHEDULER_PORT) for port in scheduler["ports"])
    assert scheduler["ports"] == ["127.0.0.1:8787:8787"]
    for name, service in _services().items():
        assert all(str(port).startswith("127.0.0.1:") for port in service.get("ports", [])), name


def test_compose_workers_reach_the_scheduler_and_gpu_workers_advertise_gpu() -> None:
    services = _services()
    workers = {n: s for n, s in services.items() if s["command"][:2] == ["dask", "worker"]}
    gpu = {n: s for n, s in workers.items() if _gpu_devices(s)}
    cpu = {n: s for n, s in workers.items() if not _gpu_devices(s)}
    assert gpu and cpu
    for service in workers.values():
        address = service["command"][2]
        _, location = parse_address(address)
        host, port = parse_host_port(location)
        assert host in services and port == SCHEDULER_PORT
    device_ids = []
    for service in gpu.values():
        assert _after(service["command"], "--resources") == "GPU=1"
        (device,) = _gpu_devices(service)
        assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
        assert len(device["device_ids"]) == 1  # one GPU per worker
        device_ids += device["device_ids"]
    assert len(device_ids) == len(set(device_ids))
    for service in cpu.values():
        assert "--resources" not in service["command"]


def test_compose_driver_runs_codexdask_against_the_scheduler_service() -> None:
    services = _services()
    driver = services["driver"]
    assert driver["command"][0] == "codexdask"
    args = _parse_segment(driver["command"][1:])
    assert args.scheduler == f"tls://scheduler:{SCHEDULER_PORT}"
    services.pop("certs")  # it mounts only the script and the tls volume
    data_mounts = {s["volumes"][0] for s in services.values()}
    assert len(data_mounts) == 1 and _mount_target(data_mounts.pop()) == "/data"
    model_mount = {_mount_target(v) for s in services.values() for v in s["volumes"][1:2]}
    assert PurePosixPath(args.store).is_relative_to("/data")
    assert any(PurePosixPath(args.model_path).is_relative_to(m) for m in model_mount)


def _compose_tls_settings(folder: Path) -> dict[str, Any]:
    """The Dask settings the compose services' environment gives, with ``/tls`` at ``folder``."""
    environment = _services()["scheduler"]["environment"]
    settings: dict[str, Any] = {}
    for name, value in environment.items():
        if name.startswith("DASK_"):
            key = name.removeprefix("DASK_").lower().replace("__", ".").replace("_", "-")
            settings[key] = (value == "true") if value in ("true", "false") else \
                value.replace("/tls/", f"{folder}/")
    return settings


def test_compose_speaks_tls_by_default_with_the_certs_service_credentials(
    tmp_path: Path,
) -> None:
    """Every service talks TLS with what ``make_certs.py`` writes: a client with those settings
    runs a task on a scheduler and worker started with them; one without is refused."""
    from distributed import Client, LocalCluster
    from distributed.security import Security

    from codexdask.engine import cluster
    from codexdask.errors import ClusterError

    services = _services()
    certs = services.pop("certs")
    assert certs["command"][-1] == "/tls" and "tls:/tls" in certs["volumes"]
    assert _after(services["scheduler"]["command"], "--protocol") == "tls"
    for name, service in services.items():
        assert "tls:/tls:ro" in service["volumes"], name
        assert service["depends_on"]["certs"]["condition"] == "service_completed_successfully"
        assert not any(arg.startswith("tcp://") for arg in service["command"]), name
    written = subprocess.run([sys.executable, str(DEPLOY / "docker" / "make_certs.py"),
                              str(tmp_path)], capture_output=True, text=True, check=True)
    assert sorted(Path(p).name for p in written.stdout.split()) == ["ca.pem", "cert.pem",
                                                                    "key.pem"]
    assert (tmp_path / "key.pem").stat().st_mode & 0o077 == 0
    settings = _compose_tls_settings(tmp_path)
    assert settings["distributed.comm.require-encryption"] is True
    with dask.config.set(settings):
        with LocalCluster(n_workers=1, processes=False, protocol="tls", security=Security(),
                          dashboard_address=":0") as local:
            address = local.scheduler_address
            with cluster.connect(SegmentConfig(scheduler=address)) as client:
                assert isinstance(client, Client) and client.submit(sum, [1, 2]).result() == 3
            with dask.config.set({"distributed.comm.tls.ca-file": None}), \
                    pytest.raises(ClusterError, match="uses TLS"):
                with cluster.connect(SegmentConfig(scheduler=address)):
                    pass


# -- addresses and commands in docs and scripts -------------------------------------------------


def _text_files() -> list[Path]:
    suffixes = {".md", ".sh", ".sbatch", ".yaml", ".py"}
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in suffixes and p.is_file())


def _addresses() -> set[str]:
    return {m for p in _text_files() for m in ADDRESS_RE.findall(p.read_text())}


def test_scheduler_addresses_in_docs_and_configs_are_what_the_cli_accepts() -> None:
    addresses = _addresses()
    assert {
        "tcp://HOST:8786", "tcp://localhost:8786",
        "tcp://codexdask-scheduler.codexdask.svc.cluster.local:8786",
    } <= addresses
    for address in addresses:
        protocol, location = parse_address(address)
        assert protocol == "tcp"
        assert parse_host_port(location)[1] == SCHEDULER_PORT, address
        args = _parse_segment(["segment", "s.zarr", "--out", "o", "--scheduler", address])
        assert segment_config(args).scheduler == address


def test_tls_addresses_in_docs_are_what_the_cli_accepts() -> None:
    addresses = {m for p in _text_files()
                 for m in re.findall(r"tls://[A-Za-z0-9][A-Za-z0-9.\-]*:\d+", p.read_text())}
    assert {"tls://HOST:8786", "tls://scheduler:8786"} <= addresses
    for address in addresses:
        assert parse_address(address)[0] == "tls"
        args = _parse_segment(["segment", "s.zarr", "--out", "o", "--scheduler", address])
        assert segment_config(args).scheduler == address


def _fenced_code_lines(markdown: str) -> list[str]:
    lines, inside = [], False
    for line in markdown.splitlines():
        if line.lstrip().startswith("```"):
            inside = not inside
        elif inside:
            lines.append(line)
    return lines


def test_codexdask_segment_commands_in_readmes_parse() -> None:
    commands = []
    for readme in sorted(DEPLOY.rglob("README.md")):
        for line in _fenced_code_lines(readme.read_text()):
            if "codexdask segment " in line:
                command = line[line.index("codexdask segment "):]
                commands.append((readme, shlex.split(command, comments=True)))
    assert len(commands) >= 5
    for readme, argv in commands:
        args = _parse_segment(argv[1:])
        assert args.command == "segment", readme
        if args.config:
            assert (ROOT / args.config).is_file(), f"{readme}: {args.config} does not exist"
            make_config(SegmentConfig, load_yaml(ROOT / args.config))


def test_run_slurm_commands_in_the_slurm_readme_parse() -> None:
    run_slurm = _run_slurm_module()
    lines = [line for line in _fenced_code_lines((DEPLOY / "slurm" / "README.md").read_text())
             if "run_slurm.py " in line]
    assert lines
    for line in lines:
        argv = shlex.split(line[line.index("run_slurm.py ") + len("run_slurm.py "):])
        args = run_slurm.parse_args(argv)
        assert PurePosixPath(args.store).is_absolute() and PurePosixPath(args.out).is_absolute()
        assert (ROOT / args.config).is_file()


# -- shell scripts ------------------------------------------------------------------------------


SCRIPTS = [DEPLOY / "local-gpu" / "start-cluster.sh", DEPLOY / "slurm" / "driver.sbatch",
           DEPLOY / "slurm" / "local-cluster.sh"]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_shell_scripts_pass_bash_n(script: Path) -> None:
    assert script.read_text().startswith("#!/usr/bin/env bash\n")
    done = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_driver_sbatch_runs_the_driver_with_the_deploy_configs() -> None:
    text = (DEPLOY / "slurm" / "driver.sbatch").read_text()
    assert "#SBATCH --gres" not in text  # the driver job needs no GPU
    assert "deploy/slurm/run_slurm.py" in text
    for path in re.findall(r"deploy/[\w./-]+\.(?:py|yaml)", text):
        assert (ROOT / path).is_file(), path


def _stub_bin(tmp_path: Path, gpus: int) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "dask").write_text('#!/bin/sh\necho "$*" >> "$DASK_LOG"\n')
    gpu_lines = "".join(f"echo 'GPU {i}: Stub (UUID: GPU-{i})'\n" for i in range(gpus))
    (bin_dir / "nvidia-smi").write_text("#!/bin/sh\n" + gpu_lines)
    for name in ("dask", "nvidia-smi"):
        (bin_dir / name).chmod(0o755)
    return bin_dir


def _start_cluster(tmp_path: Path, gpus: int, *args: str, **env: str) -> tuple[Any, list[str]]:
    log = tmp_path / "dask.log"
    environ = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    environ.update(PATH=f"{_stub_bin(tmp_path, gpus)}:{os.environ['PATH']}", DASK_LOG=str(log),
                   HOST="node1", **env)
    done = subprocess.run(["bash", str(SCRIPTS[0]), *args], env=environ, capture_output=True,
                          text=True, timeout=60)
    calls = log.read_text().splitlines() if log.exists() else []
    return done, calls


def test_start_cluster_starts_a_scheduler_and_gpu_workers_with_gpu_resources(
    tmp_path: Path,
) -> None:
    done, calls = _start_cluster(tmp_path, 2, NTHREADS="6")
    assert done.returncode == 0, done.stderr
    scheduler = next(shlex.split(c) for c in calls if c.startswith("scheduler"))
    worker = next(shlex.split(c) for c in calls if c.startswith("cuda worker"))
    assert _after(scheduler, "--port") == "8786"
    assert worker[2] == "tcp://node1:8786"
    assert _after(worker, "--resources") == "GPU=1"
    assert _after(worker, "--nthreads") == "6"
    assert "--scheduler tcp://node1:8786" in done.stdout


def test_start_cluster_counts_visible_devices_and_takes_the_port(tmp_path: Path) -> None:
    done, calls = _start_cluster(tmp_path, 8, "9000", CUDA_VISIBLE_DEVICES="0,1,2")
    assert done.returncode == 0, done.stderr
    assert "workers:   3 x GPU=1" in done.stdout
    assert any(c.startswith("scheduler --port 9000") for c in calls)
    assert any(c.startswith("cuda worker tcp://node1:9000") for c in calls)


def test_start_cluster_refuses_a_node_without_gpus(tmp_path: Path) -> None:
    done, calls = _start_cluster(tmp_path, 0)
    assert done.returncode == 1
    assert "no GPU found" in done.stderr
    assert calls == []


# -- Dockerfiles --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["Dockerfile.cpu", "Dockerfile.gpu"])
def test_dockerfiles_install_existing_extras_from_files_in_the_context(name: str) -> None:
    dockerfile = DEPLOY / "docker" / name
    text = dockerfile.read_text()
    extras = set(importlib.metadata.metadata("codexdask").get_all("Provides-Extra") or [])
    wanted = {e.strip() for group in re.findall(r"(?:\.|codexdask)\[([\w,]+)\]", text)
              for e in group.split(",")}
    assert "mesmer" in wanted and wanted <= extras
    ignore = (DEPLOY / "docker" / f"{name}.dockerignore").read_text().splitlines()
    sources = [src for line in text.splitlines() if line.startswith("COPY ")
               and "--from" not in line for src in line.split()[1:-1]]
    assert sources
    for src in sources:
        assert (ROOT / src).exists(), src
        assert f"!{src}" in ignore, f"{src} is excluded from the build context"
    assert re.search(r"^FROM python:3\.11-slim", text, re.M)  # the main environment's Python
    assert re.search(r"pip install [^\n]*'torch>=2\.4'", text)  # Mesmer's runtime
    assert "tensorflow" not in text.lower() and "deepcell" not in text.lower()
    if name == "Dockerfile.gpu":
        assert "gpu" in wanted
    else:
        assert "download.pytorch.org/whl/cpu" in text
