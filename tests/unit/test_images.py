"""The image builder (tools/images): reproducible OCI archives, and no drift from the Dockerfile."""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import shlex
import tarfile
from pathlib import Path

import pytest

from images import oci
from images.build import Catalog, Record
from images.dockerfile import parse_stages, runtime_config
from images.recipes import BASE_ENV, DISTRIBUTIONS, REPO

DOCKERFILE = REPO / "Dockerfile"
EPOCH = 1_700_000_000


def _run_commands(stage_instructions: list[tuple[str, str]]) -> list[list[str]]:
    """Every shell command of the RUN lines, split at && into argument lists."""
    commands = []
    for keyword, rest in stage_instructions:
        if keyword == "RUN":
            commands += [shlex.split(part) for part in rest.split("&&")]
    return commands


def test_operator_image_takes_its_runtime_settings_from_the_dockerfile() -> None:
    config = runtime_config(DOCKERFILE, BASE_ENV)
    env = dict(item.split("=", 1) for item in config.env)
    assert config.user == "65532:65532"
    assert config.entrypoint == ["python", "-m", "agenttoken"]
    assert config.cmd == ["run"]
    assert sorted(config.exposed_ports) == ["8080", "8081"]
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    # $PATH of the base is expanded, as Docker does: /venv/bin first, the system after it.
    assert env["PATH"].split(":")[0] == "/venv/bin"
    assert "/usr/bin" in env["PATH"].split(":")


def test_dockerfile_installs_exactly_the_distributions_the_builder_installs() -> None:
    _, stages = parse_stages(DOCKERFILE.read_text())
    build = stages[0]
    installs = [cmd for cmd in _run_commands(build.instructions) if cmd[:2] == ["/venv/bin/pip", "install"]]
    assert len(installs) == 1
    targets = [arg for arg in installs[0][2:] if not arg.startswith("-")]
    assert [os.path.normpath(t) for t in targets] == [os.path.normpath(d) for d in DISTRIBUTIONS]
    # Each distribution's files are copied into the build stage.
    copied = " ".join(rest for keyword, rest in build.instructions if keyword == "COPY")
    for dist in DISTRIBUTIONS:
        assert dist == "." or dist.split("/")[0] in copied


def test_dockerfile_and_builder_compile_byte_code_the_same_way() -> None:
    _, stages = parse_stages(DOCKERFILE.read_text())
    compiles = [cmd for cmd in _run_commands(stages[0].instructions) if "compileall" in cmd]
    assert len(compiles) == 1
    assert compiles[0][compiles[0].index("--invalidation-mode") + 1] == "unchecked-hash"
    recipe = (REPO / "tools/images/python.py").read_text()
    assert re.search(r'"--invalidation-mode",\s*"unchecked-hash",\s*VENV', recipe)


def test_dockerfile_base_image_is_a_build_argument() -> None:
    args, stages = parse_stages(DOCKERFILE.read_text())
    assert args["BASE"].startswith("python:")
    assert [stage.base for stage in stages] == [args["BASE"], args["BASE"]]


def test_dockerfile_parser_joins_continuations_and_skips_comments() -> None:
    args, stages = parse_stages(
        "ARG B=x:1\nFROM ${B} AS one\nRUN a && \\\n  # a comment inside\n  b\nFROM one\nENV A=1 \\\n    B=$A\n"
    )
    assert args == {"B": "x:1"}
    assert stages[0].name == "one"
    assert stages[0].instructions == [("RUN", "a &&  b")]
    assert stages[1].instructions == [("ENV", "A=1  B=$A")]


def _tree(root: Path) -> Path:
    (root / "bin").mkdir(parents=True)
    (root / "bin/tool").write_bytes(b"#!/bin/sh\necho hi\n")
    (root / "bin/tool").chmod(0o755)
    os.link(root / "bin/tool", root / "bin/tool2")
    (root / "bin/link").symlink_to("tool")
    (root / "data.txt").write_text("hello")
    return root


def test_layers_are_reproducible_and_clamp_times(tmp_path: Path) -> None:
    tree = _tree(tmp_path / "a")
    first = oci.LayerWriter(EPOCH)
    first.add_tree(tree, "opt")
    layer_a = first.build()
    # Same content, files touched later: same digest (times are clamped to the epoch).
    os.utime(tree / "data.txt", (EPOCH + 10_000, EPOCH + 10_000))
    second = oci.LayerWriter(EPOCH)
    second.add_tree(tree, "opt")
    layer_b = second.build()
    assert layer_a.digest == layer_b.digest
    assert layer_a.diff_id == oci.sha256_digest(gzip.decompress(layer_a.compressed))

    with tarfile.open(fileobj=io.BytesIO(layer_a.compressed), mode="r:gz") as tar:
        members = {m.name: m for m in tar}
    assert list(members) == sorted(members)
    assert members["opt/bin/tool"].mode == 0o755
    assert members["opt/bin/link"].issym()
    assert members["opt/bin/link"].linkname == "tool"
    assert members["opt/bin/tool2"].islnk()
    assert members["opt/bin/tool2"].linkname == "opt/bin/tool"
    assert all(m.mtime <= EPOCH and m.uid == 0 and m.gid == 0 for m in members.values())


def test_archive_names_the_image_for_containerd_and_reads_back(tmp_path: Path) -> None:
    layer = oci.LayerWriter(EPOCH)
    layer.add_file("hello", b"world", mode=0o755)
    config = oci.ImageConfig(entrypoint=["/hello"], user="65532:65532", exposed_ports=["8080"])
    out = tmp_path / "hello.tar"
    info = oci.write_archive(
        out, "localhost/agenttoken/hello:1", [layer.build()], config, epoch=EPOCH, created_by="t"
    )
    again = oci.write_archive(
        tmp_path / "again.tar",
        "localhost/agenttoken/hello:1",
        [layer.build()],
        config,
        epoch=EPOCH,
        created_by="t",
    )
    assert info.manifest_digest == again.manifest_digest
    assert out.read_bytes() == (tmp_path / "again.tar").read_bytes()

    with tarfile.open(out) as tar:
        names = tar.getnames()
        index_file = tar.extractfile("index.json")
        assert index_file is not None
        index = json.loads(index_file.read())
    assert names[:2] == ["oci-layout", "index.json"]
    entry = index["manifests"][0]
    assert entry["annotations"][oci.CONTAINERD_NAME] == "localhost/agenttoken/hello:1"
    assert entry["annotations"][oci.REF_NAME] == "1"
    assert entry["digest"] == info.manifest_digest

    contents = oci.read_archive(out)
    assert contents.reference == "localhost/agenttoken/hello:1"
    assert contents.config["config"]["User"] == "65532:65532"
    assert contents.config["config"]["ExposedPorts"] == {"8080/tcp": {}}
    assert contents.config["os"] == "linux"
    assert not (tmp_path / "hello.tar.partial").exists()
    root = tmp_path / "root"
    oci.unpack(contents, root)
    assert (root / "hello").read_bytes() == b"world"


@pytest.mark.parametrize("bad", ["RUN x", '["a", 1]'])
def test_dockerfile_entrypoint_must_be_exec_form(tmp_path: Path, bad: str) -> None:
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text(f"FROM scratch\nENTRYPOINT {bad}\n")
    with pytest.raises(ValueError, match="exec"):
        runtime_config(dockerfile, BASE_ENV)


def test_catalog_keeps_every_checkouts_archive_and_prunes_the_oldest(tmp_path: Path) -> None:
    def record(tag: str) -> Record:
        return Record("operator", f"localhost/agenttoken/operator:{tag}", f"inputs-{tag}", "sha256:x", 1, 2, 0.1,
                      {"archive": f"operator-{tag}.tar"})  # fmt: skip

    catalog = Catalog(tmp_path)
    for i, tag in enumerate(["dev-a", "dev-b", "dev-c"]):
        (tmp_path / f"operator-{tag}.tar").write_bytes(b"")
        os.utime(tmp_path / f"operator-{tag}.tar", (EPOCH + i, EPOCH + i))
        catalog.put(record(tag))
    # Another checkout's archive stays usable: its reference is still fresh.
    again = Catalog(tmp_path)
    assert again.fresh(
        "operator", "localhost/agenttoken/operator:dev-a", "inputs-dev-a", "operator-dev-a.tar"
    )
    assert again.records["operator"]["reference"].endswith("dev-a")
    assert not again.fresh("operator", "localhost/agenttoken/operator:dev-a", "other", "operator-dev-a.tar")

    again.prune("operator", keep=2)
    assert sorted(p.name for p in tmp_path.glob("*.tar")) == ["operator-dev-b.tar", "operator-dev-c.tar"]
    assert set(Catalog(tmp_path).archives) == {
        "localhost/agenttoken/operator:dev-b",
        "localhost/agenttoken/operator:dev-c",
    }


def test_relabel_keeps_the_layers_and_changes_the_digest(tmp_path: Path) -> None:
    layer = oci.LayerWriter(EPOCH)
    layer.add_file("hello", b"world", mode=0o755)
    config = oci.ImageConfig(entrypoint=["/hello"], labels={"kept": "yes"})
    source = tmp_path / "hello.tar"
    info = oci.write_archive(
        source, "localhost/agenttoken/hello:1", [layer.build()], config, epoch=EPOCH, created_by="t"
    )
    out = tmp_path / "relabelled.tar"
    changed = oci.relabel(source, out, "localhost/test/hello:1-b", {"upgrade": "b"}, epoch=EPOCH)
    assert changed.manifest_digest != info.manifest_digest
    assert changed.config_digest != info.config_digest
    assert (changed.compressed_size, changed.uncompressed_size) == (
        info.compressed_size,
        info.uncompressed_size,
    )
    before, after = oci.read_archive(source), oci.read_archive(out)
    assert after.reference == "localhost/test/hello:1-b"
    assert after.layers == before.layers
    assert after.config["config"]["Labels"] == {"kept": "yes", "upgrade": "b"}
    assert after.config["config"]["Entrypoint"] == ["/hello"]
    assert after.config["rootfs"] == before.config["rootfs"]
    assert not (tmp_path / "relabelled.tar.partial").exists()
