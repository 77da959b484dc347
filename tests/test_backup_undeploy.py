"""`fab backup`, `fab restore` and `fab undeploy` on the simulated host."""

from __future__ import annotations

import io
import os
import tarfile

import pytest

from tests.conftest import NOTEBOOKS, assert_notebooks_untouched, deploy, fab

pytestmark = pytest.mark.integration


def notebook_state(host) -> dict[str, str]:
    return {p: v for p, v in host.listing("/data/pluto").items()}


def test_backup_restore_round_trip_is_byte_identical_with_owners_and_modes(deployed, tmp_path):
    deployed.write("/data/pluto/private.jl", "secret plans\n", owner="2000:2000", mode="0640")
    before = notebook_state(deployed)
    archive = tmp_path / "notebooks.tar.gz"
    made = fab(deployed, "backup", "--output", str(archive))
    assert made.code == 0, made.stdout + made.stderr
    assert "files, verified." in made.stdout
    assert os.stat(archive).st_mode & 0o777 == 0o600
    assert not deployed.run(
        "ls /tmp | grep -v pluto-deploy", check=False
    ).stdout.strip()  # nothing staged
    deployed.run("rm -rf /data/pluto/* && ls -A /data/pluto | wc -l")
    restored = fab(deployed, "restore", str(archive))
    assert restored.code == 0, restored.stdout + restored.stderr
    assert notebook_state(deployed) == before
    assert_notebooks_untouched(deployed)


def test_backup_gets_a_timestamped_name_and_never_overwrites(deployed, tmp_path):
    result = fab(deployed, "backup", "--output", str(tmp_path / "a.tar.gz"))
    assert result.code == 0
    again = fab(deployed, "backup", "--output", str(tmp_path / "a.tar.gz"))
    assert (
        again.code == 1
        and again.error == f"--output: {tmp_path / 'a.tar.gz'} already exists; choose another file"
    )


def test_restore_never_overwrites_without_force(deployed, tmp_path):
    archive = tmp_path / "notebooks.tar.gz"
    assert fab(deployed, "backup", "--output", str(archive)).code == 0
    deployed.write(
        "/data/pluto/analysis.jl", "changed since the backup\n", owner="2000:2000", mode="0600"
    )
    refused = fab(deployed, "restore", str(archive))
    assert refused.code == 1
    assert (
        "exist on hainich already" in refused.error and "--force overwrites them" in refused.error
    )
    assert deployed.read("/data/pluto/analysis.jl") == "changed since the backup\n"
    forced = fab(deployed, "restore", "--force", str(archive))
    assert forced.code == 0, forced.stderr
    assert deployed.read("/data/pluto/analysis.jl") == NOTEBOOKS["/data/pluto/analysis.jl"]
    assert "replaced 2:\n  analysis.jl\n  course/week 1.jl\n" in forced.stdout


def test_restore_missing_only_brings_back_what_is_gone_and_keeps_the_rest(deployed, tmp_path):
    archive = tmp_path / "notebooks.tar.gz"
    assert fab(deployed, "backup", "--output", str(archive)).code == 0
    deployed.write("/data/pluto/analysis.jl", "newer work\n", owner="2000:2000", mode="0600")
    deployed.run("rm '/data/pluto/course/week 1.jl'")
    result = fab(deployed, "restore", "--missing-only", str(archive))
    assert result.code == 0, result.stdout + result.stderr
    assert deployed.read("/data/pluto/analysis.jl") == "newer work\n"
    assert (
        deployed.read("/data/pluto/course/week 1.jl") == NOTEBOOKS["/data/pluto/course/week 1.jl"]
    )
    assert deployed.stat("/data/pluto/course/week 1.jl")[:2] == (2000, 2000)
    assert "left 1 as they are" in result.stdout


def _archive(tmp_path, name: str, member: tarfile.TarInfo, data: bytes = b"") -> str:
    path = tmp_path / name
    with tarfile.open(path, "w:gz") as archive:
        member.size = len(data) if member.isfile() else 0
        archive.addfile(member, io.BytesIO(data) if member.isfile() else None)
    return str(path)


def _member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, link, 0o644
    return info


@pytest.mark.parametrize(
    ("member", "reason"),
    [
        (_member("/etc/cron.d/evil"), "'/etc/cron.d/evil' is an absolute path"),
        (_member("../../etc/passwd"), "is outside the destination"),
        (_member("link", tarfile.SYMTYPE, "/etc/shadow"), "is a link to an absolute path"),
        (_member("link", tarfile.SYMTYPE, "../../etc"), "is outside the destination"),
        (_member("hard", tarfile.LNKTYPE, "../outside"), "outside the destination"),
        (_member("dev", tarfile.CHRTYPE), "is a special file"),
    ],
    ids=["absolute", "dotdot", "symlink-absolute", "symlink-outside", "hardlink-outside", "device"],
)
def test_hostile_archives_are_refused_before_the_host_is_touched(
    deployed, tmp_path, member, reason
):
    path = _archive(tmp_path, "hostile.tar.gz", member, b"x")
    before = deployed.listing()
    commands = len(deployed.commands())
    result = fab(deployed, "restore", path)
    assert result.code == 1
    assert result.error.startswith(f"{path}: refused, ") and reason in result.error
    assert "(nothing was changed)" in result.error
    assert deployed.listing() == before
    assert len(deployed.commands()) == commands  # refused before connecting


def test_restore_of_a_broken_file_is_one_line(deployed, tmp_path):
    path = tmp_path / "broken.tar.gz"
    path.write_bytes(b"not a tarball")
    result = fab(deployed, "restore", str(path))
    assert result.code == 1 and result.error.startswith(f"{path}: not a readable .tar.gz backup")


def test_undeploy_removes_the_container_and_keeps_the_notebooks(deployed):
    secret = deployed.read("/var/lib/pluto-secret/secret")
    result = fab(deployed, "undeploy")
    assert result.code == 0, result.stdout + result.stderr
    assert "./pluto" not in deployed.read("/etc/nixos/configuration.nix")
    assert not deployed.exists("/etc/nixos/pluto")
    assert not deployed.exists("/etc/nixos-containers/pluto.conf")
    assert (
        deployed.run("systemctl is-active container@pluto", check=False).stdout.strip() != "active"
    )
    assert deployed.read("/var/lib/pluto-secret/secret") == secret
    assert_notebooks_untouched(deployed)
    assert "kept /data/pluto (notebooks)" in result.stdout
    again = fab(deployed, "undeploy")
    assert again.code == 0 and "nothing to do" in again.stdout


def test_after_undeploy_a_new_deploy_works(deployed):
    assert fab(deployed, "undeploy").code == 0
    result = deploy(deployed, "--add-import")
    assert result.code == 0, result.stdout + result.stderr
    assert deployed.run("systemctl -M pluto is-active pluto.service").stdout.strip() == "active"
    assert_notebooks_untouched(deployed)


def test_purge_asks_for_confirmation(deployed):
    refused = fab(deployed, "undeploy", "--purge")
    assert refused.code == 1
    assert refused.error.startswith(
        "--purge deletes /data/pluto (the notebooks) and the secret on hainich"
    )
    assert_notebooks_untouched(deployed)
    assert deployed.exists("/etc/nixos/pluto")


def test_purge_with_yes_deletes_notebooks_and_secret(deployed):
    result = fab(deployed, "undeploy", "--purge", "--yes")
    assert result.code == 0, result.stdout + result.stderr
    assert not deployed.exists("/data/pluto")
    assert not deployed.exists("/var/lib/pluto-secret")
    assert not deployed.exists("/var/lib/nixos-containers/pluto")
