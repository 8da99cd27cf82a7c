"""The container image's recipe matches the workspace.

No Docker engine runs here and no image registry can be reached, so the
image itself cannot be built in CI (buildah can build only from a local
debootstrap base; the rust and distroless base images cannot be pulled).
These checks keep deploy/docker/Dockerfile honest instead: its stages, the
packages and binaries it builds and copies, the non-root runtime user, and
the build context that .dockerignore leaves.
"""

import re
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "deploy" / "docker" / "Dockerfile"


def instructions():
    """(KEYWORD, rest) pairs, with continuation lines joined."""
    text = DOCKERFILE.read_text()
    text = re.sub(r"\\\n", " ", text)
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def args():
    return {k: v for k, v in (r.split("=", 1) for w, r in instructions() if w == "ARG" and "=" in r)}


def stages():
    """[(image, name, [instructions])] per FROM."""
    result = []
    for word, rest in instructions():
        if word == "FROM":
            parts = rest.split()
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else None
            result.append((parts[0], name, []))
        elif result:
            result[-1][2].append((word, rest))
    return result


def workspace_packages():
    """Package name -> (directory, bin names) for every workspace member."""
    root = tomllib.loads((REPO / "Cargo.toml").read_text())
    members = ["."] + root["workspace"]["members"]
    pkgs = {}
    for m in members:
        manifest = tomllib.loads((REPO / m / "Cargo.toml").read_text())
        name = manifest["package"]["name"]
        bins = [b["name"] for b in manifest.get("bin", [])]
        if (REPO / m / "src" / "bin").is_dir():
            bins += [p.stem for p in (REPO / m / "src" / "bin").glob("*.rs")]
        if (REPO / m / "src" / "main.rs").is_file() and not bins:
            bins.append(name)
        pkgs[name] = (m, bins)
    return pkgs


def resolve(image):
    return re.sub(r"\$\{(\w+)\}", lambda m: args()[m.group(1)], image)


def test_two_stages_a_builder_and_a_pinned_distroless_runtime():
    s = stages()
    assert len(s) == 2, s
    (build_image, build_name, _), (run_image, _, _) = s
    assert build_name == "builder"
    assert resolve(build_image).startswith("rust:1.95"), resolve(build_image)
    runtime = resolve(run_image)
    assert runtime.startswith("gcr.io/distroless/cc-debian12:"), runtime
    assert not runtime.endswith(":latest")


def test_the_builder_builds_packages_and_binaries_that_exist():
    _, _, steps = stages()[0]
    run = " ".join(r for w, r in steps if w == "RUN" and "cargo build" in r)
    assert "--release" in run and "--locked" in run
    pkgs = workspace_packages()
    cargo = run[run.index("cargo build"):].split("&&")[0]
    built = re.findall(r"-p (\S+)", cargo)
    assert built, run
    for p in built:
        assert p in pkgs, f"-p {p}: no such workspace package ({sorted(pkgs)})"
    bins = {b for p in built for b in pkgs[p][1]}
    copied = re.findall(r"target/release/(\S+)", run)
    assert set(copied) == {"adclick", "adclickctl"}, copied
    for b in copied:
        assert b in bins, f"{b} is not a binary of {built}"


def test_the_runtime_copies_only_the_two_binaries_and_runs_them_as_non_root():
    _, _, steps = stages()[1]
    copies = [r for w, r in steps if w == "COPY"]
    assert len(copies) == 1 and copies[0].startswith("--from=builder"), copies
    srcs = copies[0].split()[1:-1]
    dest = copies[0].split()[-1]
    assert [Path(s).name for s in srcs] == ["adclick", "adclickctl"]
    user = [r for w, r in steps if w == "USER"]
    assert user and not user[-1].startswith(("0", "root")), user
    entry = [r for w, r in steps if w == "ENTRYPOINT"]
    assert entry == [f'["{dest.rstrip("/")}/adclick"]'], entry
    # Nothing at run time needs a shell: no RUN in the runtime stage, and
    # ENTRYPOINT/CMD use the exec form.
    assert not [r for w, r in steps if w == "RUN"]
    for w, r in steps:
        if w in ("ENTRYPOINT", "CMD"):
            assert r.startswith("["), (w, r)


def test_the_build_context_keeps_sources_and_drops_build_output():
    ignore = [l.strip() for l in (REPO / ".dockerignore").read_text().splitlines()]
    ignore = [l for l in ignore if l and not l.startswith("#")]
    for must in ("target", ".git"):
        assert any(l.strip("/") == must or l.strip("/").startswith(must + "/") for l in ignore), must
    pkgs = workspace_packages()
    for name, (directory, _) in pkgs.items():
        for entry in ignore:
            e = entry.strip("/")
            assert e not in (directory, f"{directory}/src"), f"{entry} would drop {name}'s sources"
    for needed in ("Cargo.toml", "Cargo.lock", "proto"):
        assert needed not in [l.strip("/") for l in ignore]
