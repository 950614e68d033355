from pathlib import Path

import pytest

from k3stack import manifests as mf
from k3stack import settings

BASE = {"DOMAIN": "203.0.113.10.sslip.io", "ACME_EMAIL": "ops@example.com"}
CHECKSUMS = {"OPEN_WEBUI_SECRET_CHECKSUM": "0123456789abcdef", "REDIS_SECRET_CHECKSUM": "fedcba9876543210"}


def variables(**overrides):
    s = settings.load(env_dir=Path("/nonexistent"), environ={**BASE, **overrides})
    return {**s.render_vars(), **CHECKSUMS}


def test_everything_renders_and_is_ordered_by_phase():
    rendered = mf.render(variables())
    kinds = [m.kind for m in rendered]
    assert (
        kinds.index("Namespace")
        < kinds.index("PersistentVolumeClaim")
        < kinds.index("Service")
        < kinds.index("Deployment")
        < kinds.index("Ingress")
    )
    assert {m.name for m in rendered if m.kind == "Deployment"} == {"postgres", "redis", "ollama", "open-webui"}
    assert all(m.obj["metadata"]["labels"][mf.MANAGED_BY] == "k3stack" for m in rendered)


@pytest.mark.parametrize("version", ["1.35", "1.32", "1.30"])
def test_every_object_validates_strictly(version):
    assert mf.validate(mf.render(variables()), version) == []


def test_validation_catches_an_unknown_field():
    rendered = mf.render(variables())
    broken = next(m for m in rendered if m.kind == "Deployment")
    broken.obj["spec"]["template"]["spec"]["containers"][0]["imagePolicy"] = "Always"
    problems = mf.validate([broken], "1.35")
    assert len(problems) == 1
    assert "imagePolicy" in problems[0]
    assert broken.source in problems[0]


def test_images_are_pinned_and_come_from_settings():
    images = [
        c["image"]
        for m in mf.render(variables())
        if m.kind == "Deployment"
        for c in m.obj["spec"]["template"]["spec"].get("initContainers", [])
        + m.obj["spec"]["template"]["spec"]["containers"]
    ]
    assert images
    assert not any(i.endswith((":latest", ":main")) for i in images)
    assert "ollama/ollama:0.32.15" in images


def test_undefined_variable_names_file_and_line(tmp_path):
    (tmp_path / "llm-stack").mkdir()
    (tmp_path / "llm-stack" / "x.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n"
        "data:\n  a: ${NOPE}\n  b: |\n    line\n    ${ALSO_NOPE}\n"
    )
    with pytest.raises(mf.RenderError) as error:
        mf.render({}, k8s_dir=tmp_path, targets=["llm-stack"])
    assert error.value.problems == [
        "k8s/llm-stack/x.yaml:6: ${NOPE} is not defined (a setting of env/example.env, or a value k3stack computes)",
        "k8s/llm-stack/x.yaml:9: ${ALSO_NOPE} is not defined (a setting of env/example.env, or a value k3stack "
        "computes)",
    ]


def test_values_cannot_change_the_structure(tmp_path):
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "x.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\ndata:\n  a: ${A}\n  n: ${N}\n"
    )
    (m,) = mf.render({"A": "b: c\n- d", "N": "3"}, k8s_dir=tmp_path, targets=["t"])
    assert m.obj["data"] == {"a": "b: c\n- d", "n": 3}


def test_invalid_yaml_is_reported_with_its_line(tmp_path):
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "x.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: [x\n")
    with pytest.raises(mf.RenderError, match=r"k8s/t/x.yaml:\d+: not valid YAML"):
        mf.render({}, k8s_dir=tmp_path, targets=["t"])


def test_gpu_switch_adds_runtime_class_and_limit():
    ollama = next(m for m in mf.render(variables(), gpu=True) if m.kind == "Deployment" and m.name == "ollama")
    pod = ollama.obj["spec"]["template"]["spec"]
    assert pod["runtimeClassName"] == "nvidia"
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    plain = next(m for m in mf.render(variables()) if m.kind == "Deployment" and m.name == "ollama")
    assert "runtimeClassName" not in plain.obj["spec"]["template"]["spec"]


def test_the_in_cluster_pull_job_is_valid_and_named_by_its_models():
    from k3stack import pulljob

    loaded = settings.load(
        env_dir=Path("/nonexistent"), environ={"DOMAIN": "203.0.113.10.sslip.io", "ACME_EMAIL": "ops@example.com"}
    )
    job = pulljob.job_manifest(loaded, ["llama3.1:8b", "mistral:7b"])
    assert mf.validate([job], loaded["K8S_VERSION"]) == []
    assert job.name == pulljob.job_manifest(loaded, ["llama3.1:8b", "mistral:7b"]).name
    assert job.name != pulljob.job_manifest(loaded, ["mistral:7b"]).name


def test_yml_files_are_read_and_editor_leftovers_are_skipped_and_listed(tmp_path):
    folder = tmp_path / "t"
    folder.mkdir()
    doc = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {}\n  namespace: n\n"
    (folder / "a.yaml").write_text(doc.format("a"))
    (folder / "extra.yml").write_text(doc.format("extra"))
    for leftover in ("a.yaml~", ".a.yaml.swp", "#a.yaml#", "a.yaml.bak", "a.yaml.orig", "notes.txt", ".hidden.yaml"):
        (folder / leftover).write_text("not: [valid\n")  # would fail the render if it were read
    rendered = mf.render({}, k8s_dir=tmp_path, targets=["t"])
    assert sorted(m.name for m in rendered) == ["a", "extra"]
    assert sorted(p.name for p in mf.skipped_files(tmp_path, ["t"])) == sorted(
        [".a.yaml.swp", "#a.yaml#", ".hidden.yaml", "a.yaml.bak", "a.yaml.orig", "a.yaml~", "notes.txt"]
    )


def test_an_empty_metadata_is_one_problem_not_a_crash(tmp_path):
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "x.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata:\n")
    with pytest.raises(mf.RenderError, match=r"k8s/t/x.yaml: a document lacks apiVersion, kind or metadata.name"):
        mf.render({}, k8s_dir=tmp_path, targets=["t"])


@pytest.mark.parametrize(
    ("reference", "tag"),
    [
        ("ghcr.io/open-webui/open-webui:v0.11.0", "v0.11.0"),
        ("ghcr.io/open-webui/open-webui:v0.11.0@sha256:" + "a" * 64, "v0.11.0"),  # pinned by digest too
        ("ghcr.io/open-webui/open-webui@sha256:" + "b" * 64, ""),  # a digest is not a tag
        ("registry.local:5000/team/ollama", ""),  # a registry port is not a tag
        ("registry.local:5000/team/ollama:0.32.15", "0.32.15"),
        ("postgres:17.6", "17.6"),
    ],
)
def test_image_tag_follows_the_reference_grammar(reference, tag):
    assert mf.image_tag(reference) == tag
