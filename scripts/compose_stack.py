"""`make compose-up / compose-down`: the compose stack (CPU profile), built and started on this machine.

    python scripts/compose_stack.py up [--project lfi] [--synth-size 100]   engine, images, data, up, health
    python scripts/compose_stack.py down [--project lfi]                    down -v: containers, network, volumes
    python scripts/compose_stack.py build                                   engine and images only

What `up` does, each step skipped when already done:
1. a Docker engine: if none answers and we are root, `dockerd` is started in the background;
2. the base images: Docker Hub's python:3.11-slim and redis:7-alpine when they can be pulled, else one
   image `lfi-base:bookworm` made from Debian's mirror with debootstrap (Python 3.11, redis-server,
   curl), kept by Docker between runs; LFI_BASE_IMAGE / LFI_REDIS_IMAGE choose them by hand;
3. the images of docker-compose.yml's cpu profile, with `docker build --network host` (inside the
   default bridge network a build finds no DNS) and the build arguments the compose file gives, the
   host's CPU torch wheel copied to docker/wheelhouse/ first (a container's pip would take CUDA's);
4. the synthetic data set under $LFI_DATA_HOST/synth (./data), for jobs to train on;
5. `COMPOSE_PROFILES=cpu docker compose up -d` (or docker-compose 1.29), then a wait until every
   container's health check passes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

import yaml
from rich.console import Console

ROOT = Path(__file__).resolve().parents[1]
LOCAL_BASE = "lfi-base:bookworm"
PROJECT_LABEL = "lfi.project=lfi"  # on the local base and on every image and build stage docker/Dockerfile makes
HUB_BASE, HUB_REDIS = "python:3.11-slim", "redis:7-alpine"
# python3-venv: the Dockerfile's virtual environment; redis-server: the redis service; curl: health checks
BASE_PACKAGES = ["python3", "python3-venv", "ca-certificates", "redis-server", "curl", "passwd"]
# The local base is made for this machine: it trusts what the host trusts (a proxy's CA included)
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
TORCH_VERSION = "2.13.0"
PROFILE = "cpu"
DEMO_KEY = "demo-key"
LOG_DIR = ROOT / "runs" / "compose"
console = Console(stderr=True)


class StackError(RuntimeError):
    """A step failed; the message says what to do next."""


def _run(cmd: list[str], *, env: dict[str, str] | None = None, timeout: float | None = None,
         check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise StackError(f"`{' '.join(cmd)}` failed ({proc.returncode}):\n{(proc.stderr or proc.stdout)[-3000:]}")
    return proc


def docker(*args: str, timeout: float | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    """`docker ARGS`, its output captured; unless `check=False` a failure raises StackError with its stderr.
    The one docker helper of this script, bench/compose_build.py and tests/e2e/test_compose_stack.py."""
    return _run(["docker", *args], timeout=timeout, check=check)


def containers(project: str, service: str | None = None) -> list[dict]:
    """`docker inspect` of the project's containers, running or not (only one service's, given one)."""
    filters = ["--filter", f"label=com.docker.compose.project={project}"]
    if service is not None:
        filters += ["--filter", f"label=com.docker.compose.service={service}"]
    ids = docker("ps", "-aq", *filters).stdout.split()
    return json.loads(docker("inspect", *ids).stdout) if ids else []


def _logged(cmd: list[str], log: Path, what: str, *, env: dict[str, str] | None = None,
            stdin: IO[bytes] | None = None, progress: Callable[[str], str | None] | None = None) -> None:
    """Run `cmd` with its output in `log`, a spinner showing the latest progress line meanwhile."""
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with log.open("w") as out, console.status(what) as status:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=stdin, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        for line in proc.stdout:
            out.write(line)
            out.flush()  # the log can be followed while it runs
            step = progress(line) if progress else None
            if step:
                status.update(f"{what}: {step} ({time.monotonic() - started:.0f} s)")
        code = proc.wait()
    if code != 0:
        tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-30:])
        raise StackError(f"{what} failed ({code}); the last lines of {log}:\n{tail}")
    console.print(f"{what}: done in {time.monotonic() - started:.0f} s")


def engine_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    return docker("info", "--format", "{{.ServerVersion}}", timeout=30, check=False).returncode == 0


def ensure_engine(timeout_s: float = 90) -> None:
    """A Docker engine that answers; started here (dockerd in the background) when we may and can."""
    if engine_answers():
        return
    if shutil.which("docker") is None or shutil.which("dockerd") is None:
        raise StackError("no Docker engine: install one (Debian: apt-get install docker.io docker-compose)")
    if os.geteuid() != 0:
        raise StackError("no Docker engine answers and only root can start one: `sudo dockerd &`, "
                         "or start Docker's service")
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    log = (LOG_DIR / "dockerd.log").open("ab")
    console.print(f"starting dockerd in the background (log: {LOG_DIR / 'dockerd.log'})")
    subprocess.Popen(["dockerd"], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                     start_new_session=True)
    deadline = time.monotonic() + timeout_s
    while not engine_answers():
        if time.monotonic() > deadline:
            raise StackError(f"dockerd did not answer within {timeout_s:.0f} s; see {LOG_DIR / 'dockerd.log'}")
        time.sleep(1)


def compose_command() -> list[str]:
    """`docker compose` (v2) where the plugin is installed, else Debian's docker-compose (1.29)."""
    if shutil.which("docker") and docker("compose", "version", check=False).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    raise StackError("neither `docker compose` nor docker-compose is installed: apt-get install docker-compose")


def image_exists(name: str) -> bool:
    return docker("image", "inspect", name, check=False).returncode == 0


def _pullable(name: str) -> bool:
    if image_exists(name):
        return True
    try:
        return docker("pull", "-q", name, timeout=300, check=False).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def debian_mirror() -> str:
    """The Debian mirror of this machine's apt sources (deb822 or one-line), for debootstrap."""
    sources = Path("/etc/apt/sources.list.d")
    files = [Path("/etc/apt/sources.list"), *sorted(sources.glob("*.sources")), *sorted(sources.glob("*.list"))]
    for path in files:
        if not path.is_file():
            continue
        for line in path.read_text(errors="replace").splitlines():
            words = line.split()
            urls = [w for w in words if w.startswith(("http://", "https://"))]
            if urls and ("URIs:" in words or words[:1] == ["deb"]) and urls[0].rstrip("/").endswith("/debian"):
                return urls[0]
    return "http://deb.debian.org/debian"


def ensure_local_base() -> str:
    """`lfi-base:bookworm` from Debian's mirror; built once, then Docker keeps it."""
    if image_exists(LOCAL_BASE):
        return LOCAL_BASE
    if shutil.which("debootstrap") is None:
        raise StackError("Docker Hub can't be reached and debootstrap is missing: apt-get install debootstrap "
                         "(or set LFI_BASE_IMAGE and LFI_REDIS_IMAGE to images you have)")
    mirror = debian_mirror()
    with tempfile.TemporaryDirectory(prefix="lfi-base-", dir="/var/tmp") as tmp:
        rootfs = Path(tmp) / "rootfs"
        _logged(["debootstrap", "--variant=minbase", "--include=" + ",".join(BASE_PACKAGES), "bookworm",
                 str(rootfs), mirror], LOG_DIR / "debootstrap.log", f"debootstrap of {LOCAL_BASE} from {mirror}",
                progress=lambda line: line[3:].strip() if line.startswith("I: ") else None)
        for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):  # not needed in the image
            for item in (rootfs / cache).glob("*"):
                if item.is_file():
                    item.unlink()
        if HOST_CA_BUNDLE.is_file():  # pip inside the build goes through whatever TLS proxy the host trusts
            shutil.copyfile(HOST_CA_BUNDLE, rootfs / "etc/ssl/certs/ca-certificates.crt")
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        _logged(["docker", "import", "--change", 'CMD ["/bin/bash"]', "--change", f"LABEL {PROJECT_LABEL}", "-",
                 LOCAL_BASE],
                LOG_DIR / "import.log", f"docker import {LOCAL_BASE}", stdin=tar.stdout)
        tar.stdout.close()
        if tar.wait() != 0:
            raise StackError(f"tar of {rootfs} failed")
    return LOCAL_BASE


def base_images() -> dict[str, str]:
    """LFI_BASE_IMAGE and LFI_REDIS_IMAGE: as set, else Docker Hub's, else the local Debian base."""
    chosen = {}
    for variable, hub in (("LFI_BASE_IMAGE", HUB_BASE), ("LFI_REDIS_IMAGE", HUB_REDIS)):
        chosen[variable] = os.environ.get(variable) or (hub if _pullable(hub) else None)
    if None in chosen.values():
        console.print(f"Docker Hub can't be reached: using {LOCAL_BASE}, made from Debian's mirror")
        local = ensure_local_base()
        chosen = {k: v or local for k, v in chosen.items()}
    return chosen


def fill_wheelhouse() -> None:
    """The host's CPU torch wheel into docker/wheelhouse/, if pip finds one (a local or cached wheel)."""
    wheelhouse = ROOT / "docker" / "wheelhouse"
    if any(wheelhouse.glob(f"torch-{TORCH_VERSION}+cpu-*.whl")):
        return
    with tempfile.TemporaryDirectory() as tmp:
        found = _run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                      "-d", tmp, f"torch=={TORCH_VERSION}+cpu"], check=False, timeout=1800)
        wheels = list(Path(tmp).glob("torch-*.whl"))
        if found.returncode != 0 or not wheels:
            console.print("no CPU torch wheel on this host: the image build downloads it from the CPU index")
            return
        shutil.move(str(wheels[0]), wheelhouse / wheels[0].name)


def compose_env(project: str, images: dict[str, str] | None = None) -> dict[str, str]:
    """The environment compose runs in; without `images` the compose file's defaults (Docker Hub's)."""
    return {**os.environ, "COMPOSE_PROFILES": PROFILE, "COMPOSE_PROJECT_NAME": project, **(images or {})}


def profile_builds(env: dict[str, str]) -> dict[str, dict]:
    """image name -> build section, for the services the cpu profile starts (one build per image)."""
    config = yaml.safe_load(_run([*compose_command(), "config"], env=env).stdout)
    builds = {}
    for service in config["services"].values():
        profiles = service.get("profiles") or []
        if "build" in service and (not profiles or PROFILE in profiles):
            builds.setdefault(service["image"], service["build"])
    return builds


def build_image(env: dict[str, str], image: str, build: dict) -> None:
    """`docker build --network host` with the compose file's build section for `image`."""
    context = Path(build.get("context", "."))
    args = [f"--build-arg={k}={v}" for k, v in (build.get("args") or {}).items()]
    cmd = ["docker", "build", "--network", "host", "-f", str(context / build.get("dockerfile", "Dockerfile")),
           *args, "-t", image, str(context)]
    # the classic builder: the same on Docker 20.10 with or without buildx; multi-stage is all we need
    _logged(cmd, LOG_DIR / f"build-{image.replace(':', '_').replace('/', '_')}.log", f"docker build {image}",
            env={**env, "DOCKER_BUILDKIT": "0"},
            progress=lambda line: line.strip()[:90] if line.startswith("Step ") else None)


def build_images(env: dict[str, str]) -> list[str]:
    """Build (Docker's layer cache makes an unchanged image a few seconds) every image of the profile."""
    fill_wheelhouse()
    builds = profile_builds(env)
    for image, build in builds.items():
        build_image(env, image, build)
    return list(builds)


def prepare_data(size: int) -> Path:
    """The synthetic set the first jobs train on, where the compose file mounts the data from."""
    data_host = Path(os.environ.get("LFI_DATA_HOST", "./data"))
    data_host = data_host if data_host.is_absolute() else ROOT / data_host
    dataset = data_host / "synth"
    data_host.mkdir(parents=True, exist_ok=True)
    if data_host.stat().st_mode & 0o005 != 0o005:  # the services run as uid 1000 (user lfi), not as its owner
        raise StackError(f"the containers can't read {data_host}: `chmod o+rx {data_host}`, or mount another "
                         "folder with LFI_DATA_HOST")
    if (dataset / "annotations.jsonl").exists():
        return dataset
    from shared.synth import generate

    with console.status(f"generating the synthetic data set in {dataset} …"):
        generate(dataset, n_train_per_class=size, n_val_per_class=max(2, size // 4),
                 n_shifted_per_class=max(2, size // 4), seed=0)
    return dataset


def check_teams_file() -> Path:
    """The teams file the stack mounts; the demo's must still hold the public key the README gives."""
    from shared.teams import hash_key

    teams = Path(os.environ.get("LFI_TEAMS_FILE_HOST", "./config/teams.demo.yaml"))
    teams = teams if teams.is_absolute() else ROOT / teams
    if not teams.is_file():
        raise StackError(f"no teams file at {teams}: make one with `lfi teacher team-key NAME`")
    if teams.name == "teams.demo.yaml" and hash_key(DEMO_KEY) not in teams.read_text():
        raise StackError(f"{teams} no longer holds the key {DEMO_KEY!r}: `git checkout {teams}`")
    return teams


def wait_healthy(project: str, timeout_s: float) -> list[dict]:
    """Until every container of the project passes its health check; fails on one that has stopped."""
    deadline = time.monotonic() + timeout_s
    with console.status("waiting for the health checks") as status:
        while True:
            found = containers(project)
            states = {c["Name"].lstrip("/"): (c["State"].get("Health") or {}).get("Status", c["State"]["Status"])
                      for c in found}
            dead = [c["Name"].lstrip("/") for c in found if c["State"]["Status"] in ("exited", "dead")]
            if dead:
                logs = docker("logs", "--tail", "40", dead[0], check=False)
                raise StackError(f"{dead[0]} stopped:\n{logs.stdout[-2000:]}{logs.stderr[-2000:]}")
            if found and all(s == "healthy" for s in states.values()):
                return found
            if time.monotonic() > deadline:
                raise StackError(f"not healthy after {timeout_s:.0f} s: {states}")
            status.update("waiting for the health checks: " + ", ".join(f"{k} {v}" for k, v in sorted(states.items())))
            time.sleep(2)


def up(project: str, synth_size: int, timeout_s: float) -> None:
    ensure_engine()
    env = compose_env(project, base_images())
    build_images(env)
    dataset = prepare_data(synth_size)
    check_teams_file()
    started = time.monotonic()
    _run([*compose_command(), "up", "-d", "--no-build"], env=env, timeout=timeout_s)
    wait_healthy(project, timeout_s)
    console.print(f"the stack is up and healthy ({time.monotonic() - started:.0f} s after `up`)")
    dashboard = f"http://127.0.0.1:{env.get('LFI_DASHBOARD_PORT', '8300')}"
    console.print(f"dashboard {dashboard}/ (team key {DEMO_KEY}), teacher "
                  f"http://127.0.0.1:{env.get('LFI_TEACHER_PORT', '8100')}, data {dataset}\nqueue a job:\n"
                  f"  curl -s {dashboard}/jobs -H 'Authorization: Bearer {DEMO_KEY}' -H 'content-type: "
                  "application/json' -d '{\"dataset\": \"synth\", \"epochs\": 2, \"eval_domains\": [\"shifted\"]}'\n"
                  f"stop and remove everything: make compose-down")


def down(project: str) -> None:
    if not engine_answers():
        console.print("no Docker engine answers: nothing to take down")
        return
    _run([*compose_command(), "down", "-v", "--remove-orphans"], env=compose_env(project), timeout=300)
    console.print(f"project {project}: containers, network and volumes removed")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["up", "down", "build"])
    parser.add_argument("--project", default=os.environ.get("COMPOSE_PROJECT_NAME", "lfi"),
                        help="compose project name (containers, network and volumes carry it)")
    parser.add_argument("--synth-size", type=int, default=100, help="synthetic training images per class")
    parser.add_argument("--timeout-s", type=float, default=600, help="for `up` and the health checks")
    args = parser.parse_args(argv)
    try:
        if args.action == "up":
            up(args.project, args.synth_size, args.timeout_s)
        elif args.action == "down":
            down(args.project)
        else:
            ensure_engine()
            build_images(compose_env(args.project, base_images()))
    except StackError as exc:
        console.print(f"[red]error:[/red] {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))  # `shared` when run as a file from a checkout
    sys.exit(main())
