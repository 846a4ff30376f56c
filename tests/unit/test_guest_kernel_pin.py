"""The guest boots the one kernel tests/oracles model (lb/testbed/guest.py KERNEL_PACKAGE).

On a machine whose apt lists were stale, "the newest kernel apt offers" was 6.1.176 where the
expectations were taken on 6.1.192, and kernel IPVS re-evaluates OVERLOAD differently on a
threshold edit between the two: tests/kernel failed on the kernel's side. These pin the choice.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from lb.testbed import guest
from oracles import kernel_config


class Fetched(Exception):
    """prepare_kernel went on to fetch a kernel."""


def unpacked(root: Path, release: str) -> Path:
    boot = root / "boot"
    boot.mkdir(parents=True)
    (boot / f"vmlinuz-{release}").write_bytes(b"")
    return root


def refuse_fetch() -> str:
    raise Fetched


def test_pin_is_the_kernel_the_oracles_model() -> None:
    assert kernel_config.KERNEL_RELEASE == f"{guest.KERNEL_RELEASE} (Debian linux {guest.KERNEL_PACKAGE_VERSION})"
    assert guest.KERNEL_PACKAGE == f"linux-image-{guest.KERNEL_RELEASE}"


def test_cached_pinned_kernel_is_kept_without_apt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    k = unpacked(tmp_path / "k", guest.KERNEL_RELEASE)
    monkeypatch.setattr(guest, "KERNEL_DIR", k)
    monkeypatch.setattr(guest, "_choose_kernel_package", refuse_fetch)
    assert guest.prepare_kernel(log=False) == k / "boot" / f"vmlinuz-{guest.KERNEL_RELEASE}"
    assert guest.kernel_release() == guest.KERNEL_RELEASE


def test_cached_other_release_is_replaced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    k = unpacked(tmp_path / "k", "6.1.0-50-amd64")
    monkeypatch.setattr(guest, "KERNEL_DIR", k)
    monkeypatch.setattr(guest, "_choose_kernel_package", refuse_fetch)
    with pytest.raises(Fetched):
        guest.prepare_kernel(log=False)


def test_named_folder_is_used_as_it_is(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    k = unpacked(tmp_path / "mine", "6.1.0-50-amd64")
    monkeypatch.setattr(guest, "_choose_kernel_package", refuse_fetch)
    assert guest.prepare_kernel(k, log=False).name == "vmlinuz-6.1.0-50-amd64"


def test_choice_prefers_the_pinned_version(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []

    class Out:
        def __init__(self, stdout: str) -> None:
            self.stdout, self.returncode, self.stderr = stdout, 0, ""

    def run(argv: list[str], **_: object) -> Out:
        calls.append(argv)
        return Out(f" {guest.KERNEL_PACKAGE} | {guest.KERNEL_PACKAGE_VERSION} | http://deb.debian.org/debian-security "
                   "bookworm-security/main amd64 Packages\n")

    monkeypatch.setattr(guest.subprocess, "run", run)
    assert guest._choose_kernel_package() == f"{guest.KERNEL_PACKAGE}={guest.KERNEL_PACKAGE_VERSION}"
    assert calls == [["apt-cache", "madison", guest.KERNEL_PACKAGE]]  # no apt-get update when the lists have it


def test_choice_falls_back_to_the_newest_loudly(monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    class Out:
        def __init__(self, stdout: str) -> None:
            self.stdout, self.returncode, self.stderr = stdout, 0, ""

    def run(argv: list[str], **_: object) -> Out:
        if argv[:2] == ["apt-cache", "search"]:
            return Out("linux-image-6.1.0-50-amd64 - Linux 6.1\nlinux-image-6.1.0-9-amd64 - Linux 6.1\n")
        if argv[:2] == ["apt-cache", "policy"]:
            return Out("linux-image-6.1.0-50-amd64:\n  Installed: (none)\n  Candidate: 6.1.176-1\n")
        return Out("")

    monkeypatch.setattr(guest.subprocess, "run", run)
    assert guest._choose_kernel_package() == "linux-image-6.1.0-50-amd64=6.1.176-1"
    assert "WARNING" in capsys.readouterr().err
