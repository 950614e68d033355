"""inv setup's steps decide from stamps and checks, install only what is missing, and never
stop at the first failing step (tests/provision.py)."""

from __future__ import annotations

import pytest

from tests import provision


@pytest.fixture
def tools(tmp_path, monkeypatch):
    (tmp_path / "tools").mkdir()
    (tmp_path / "requirements-tools.txt").write_text("checkov==3.3.30\n")
    monkeypatch.setattr(provision, "ROOT", tmp_path)
    monkeypatch.setattr(provision, "TOOLS", tmp_path / "tools")
    ran: list[list[str]] = []

    def fake_run(argv, *, env=None):
        ran.append(list(argv))
        if argv[1:3] == ["-m", "venv"]:
            (tmp_path / "tools" / ".venv" / "bin").mkdir(parents=True)
            (tmp_path / "tools" / ".venv" / "bin" / "pip").touch()
        if argv[-2:] == ["-r", str(tmp_path / "requirements-tools.txt")]:
            (tmp_path / "tools" / ".venv" / "bin" / "checkov").touch()

    monkeypatch.setattr(provision, "_run", fake_run)
    return tmp_path, ran


def test_the_linters_venv_installs_once_and_again_when_its_requirements_change(tools):
    root, ran = tools
    assert provision.linters_venv().status == "changed"
    assert len(ran) == 2  # venv + pip install
    assert provision.linters_venv().status == "ok"
    assert len(ran) == 2  # the stamp matched: nothing run
    (root / "requirements-tools.txt").write_text("checkov==3.3.31\n")
    assert provision.linters_venv().status == "changed"
    assert ran[-1][-2:] == ["-r", str(root / "requirements-tools.txt")]


def test_a_failing_step_is_reported_and_the_others_still_run(monkeypatch):
    def broken():
        raise RuntimeError("`apt-get install` exited 100:\nE: Unable to locate package")

    seen = []
    monkeypatch.setattr(provision, "STEPS", [broken, lambda: provision.Outcome("npm tools", "ok", "matches")])
    outcomes = provision.provision(seen.append)
    assert [(o.step, o.status) for o in outcomes] == [("broken", "failed"), ("npm tools", "ok")]
    assert "Unable to locate package" in outcomes[0].detail
    assert seen == outcomes


def test_without_root_nothing_is_installed_and_what_is_missing_is_named(monkeypatch):
    monkeypatch.setattr(provision, "is_root", lambda: False)
    monkeypatch.setattr(provision, "missing_apt_packages", lambda: ["etcd-server", "shellcheck"])
    monkeypatch.setattr(provision, "_run", lambda *a, **k: pytest.fail("installed without root"))
    outcome = provision.system_packages()
    assert (outcome.status, outcome.detail) == ("missing", "not root; missing: etcd-server shellcheck")


def test_a_program_another_package_provides_is_not_installed_again(monkeypatch):
    """kubectl from Google's SDK (this kind of machine) must not pull Debian's kubernetes-client,
    whose /usr/bin/kubectl would clash; a fresh Debian without it gets it (the upgrade tests'
    `k3s kubectl` runs /usr/bin/kubectl)."""
    present = {"node", "npm"}
    monkeypatch.setattr(
        provision.shutil,
        "which",
        lambda program: None if program == "dpkg-query" else (program if program in present else None),
    )
    assert "kubernetes-client" in provision.missing_apt_packages()
    present.add("/usr/bin/kubectl")
    assert "kubernetes-client" not in provision.missing_apt_packages()
    assert "nodejs" not in provision.missing_apt_packages()
