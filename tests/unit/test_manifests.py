from pathlib import Path
from tempfile import mkdtemp

import pytest

from k3stack import manifests as mf
from k3stack import settings

BASE = {"DOMAIN": "203.0.113.10.sslip.io", "ACME_EMAIL": "ops@example.com"}
CHECKSUMS = {
    "OPEN_WEBUI_SECRET_CHECKSUM": "0123456789abcdef",
    "REDIS_SECRET_CHECKSUM": "fedcba9876543210",
    "NETDATA_STREAM_CHECKSUM": "00112233aabbccdd",
}


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
    with pytest.raises(mf.RenderError, match=r"k8s/t/x.yaml:1: a document lacks apiVersion, kind or metadata.name"):
        mf.render({}, k8s_dir=tmp_path, targets=["t"])


@pytest.mark.parametrize(
    ("document", "problem"),
    [
        ("apiVersion: v1\nkind: [ConfigMap]\nmetadata: {name: x}\n", "kind is a list ['ConfigMap'], not a name"),
        ("apiVersion: 1\nkind: ConfigMap\nmetadata: {name: x}\n", "apiVersion is a number 1, not a name"),
        ("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: [x]}\n", "metadata.name is a list ['x'], not a name"),
        ("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x, namespace: [a]}\n", "metadata.namespace is a list"),
        ("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x, namespace: ''}\n", "metadata.namespace is empty"),
        ("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x, labels: app}\n", "metadata.labels is 'app', not a map"),
        ("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x, labels: [a]}\n", "metadata.labels is a list"),
        ("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x, labels: {v: 1}}\n", "metadata.labels.v: a number 1"),
        (
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x, annotations: {on: yes}}\n",
            "annotations.True: a boolean",
        ),
        ("- a\n- b\n", "a document lacks apiVersion, kind or metadata.name"),
        ("apiVersion: v1\nkind: ConfigMap\nmetadata: name\n", "a document lacks apiVersion, kind or metadata.name"),
    ],
    ids=[
        "kind-list",
        "apiversion-number",
        "name-list",
        "namespace-list",
        "namespace-empty",
        "labels-string",
        "labels-list",
        "label-number",
        "annotation-yaml11-bool",
        "document-list",
        "metadata-string",
    ],
)
def test_a_document_of_the_wrong_shape_is_one_problem_naming_file_line_and_fix(tmp_path, document, problem):
    """Issue 15 kind 5: a k8s/ document whose identity has the wrong YAML type is one problem line
    (file:line: what — fix: how), never a TypeError from deep inside deploy."""
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "x.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: fine}\n---\n" + document)
    with pytest.raises(mf.RenderError) as caught:
        mf.render({}, k8s_dir=tmp_path, targets=["t"])
    assert caught.value.problems == [caught.value.problems[0]]
    line = caught.value.problems[0]
    assert line.startswith("k8s/t/x.yaml:5: "), line
    assert problem in line, line
    assert " — fix: " in line, line


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


def write(tmp_path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return tmp_path


def test_stamping_merges_k3stacks_label_and_source_into_the_objects_own():
    k8s = "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  labels: {app: web, tier: front}\n"
    k8s += "  annotations: {note: kept}\n"
    (m,) = mf.render({}, k8s_dir=write(Path(mkdtemp()), {"t/web.yaml": k8s}), targets=["t"])
    assert m.obj["metadata"]["labels"] == {"app": "web", "tier": "front", "app.kubernetes.io/managed-by": "k3stack"}
    assert m.obj["metadata"]["annotations"] == {"note": "kept", "k3stack.dev/source": "t/web.yaml"}
    assert m.source == "t/web.yaml"
    bare = "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  labels:\n  annotations:\n"
    (m,) = mf.render({}, k8s_dir=write(Path(mkdtemp()), {"t/web.yaml": bare}), targets=["t"])
    assert m.obj["metadata"]["labels"] == {"app.kubernetes.io/managed-by": "k3stack"}
    assert m.obj["metadata"]["annotations"] == {"k3stack.dev/source": "t/web.yaml"}


def test_secrets_and_claims_go_before_the_workloads_and_a_second_target_is_read_too(tmp_path):
    doc = "apiVersion: {}\nkind: {}\nmetadata:\n  name: {}\n  namespace: n\n"
    write(
        tmp_path,
        {
            "a/1-deploy.yaml": doc.format("apps/v1", "Deployment", "web"),
            "a/2-secret.yaml": doc.format("v1", "Secret", "web"),
            "b/ns.yaml": "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: n\n",
            "b/pvc.yml": doc.format("v1", "PersistentVolumeClaim", "data"),
            "b/svc.yaml": doc.format("v1", "Service", "web")
            + "---\n"
            + doc.format("networking.k8s.io/v1", "Ingress", "web"),
        },
    )
    rendered = mf.render({}, k8s_dir=tmp_path, targets=["a", "b", "missing"])
    assert [m.kind for m in rendered] == [
        "Namespace",
        "Secret",
        "PersistentVolumeClaim",
        "Service",
        "Deployment",
        "Ingress",
    ]
    assert [[m.kind for m in group] for group in mf.phases(rendered)] == [
        ["Namespace"],
        ["Secret", "PersistentVolumeClaim"],
        ["Service"],
        ["Deployment"],
        ["Ingress"],
    ]
    assert mf.manifest_files(tmp_path, ["missing"]) == []


def test_every_problem_of_every_file_is_reported_at_once(tmp_path):
    doc = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {}\n  namespace: n\n"
    write(
        tmp_path,
        {
            "t/a.yaml": doc.format("same") + "---\n---\n" + "- a list\n",
            "t/b.yaml": doc.format("same"),
            "t/c.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata: [x]\n",
            "t/d.yaml": "kind: ConfigMap\nmetadata:\n  name: d\n",
        },
    )
    with pytest.raises(mf.RenderError) as error:
        mf.render({}, k8s_dir=tmp_path, targets=["t"])
    lacks = "a document lacks apiVersion, kind or metadata.name — fix: give every document all three"
    assert error.value.problems == [
        f"k8s/t/a.yaml:8: {lacks}",  # the line the document starts on
        f"k8s/t/c.yaml:1: {lacks}",
        f"k8s/t/d.yaml:1: {lacks}",
        "k8s/t/b.yaml: configmap/same is also defined in k8s/t/a.yaml",
    ]
    assert str(error.value) == "4 problems in k8s/:\n" + "\n".join(f"  - {p}" for p in error.value.problems)
    assert str(mf.RenderError(["one"])) == "one"


def test_a_variable_inside_text_keeps_the_text_and_a_block_counts_its_lines(tmp_path):
    write(
        tmp_path,
        {
            "t/x.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\ndata:\n"
            '  url: "https://${HOST}:${PORT}/"\n  n: "${N}"\n  t: ${T}\n  f: |\n    a\n    b ${NOPE}\n'
        },
    )
    with pytest.raises(mf.RenderError) as error:
        mf.render({"HOST": "h", "PORT": "1", "N": "3", "T": "true"}, k8s_dir=tmp_path, targets=["t"])
    assert error.value.problems == [
        "k8s/t/x.yaml:11: ${NOPE} is not defined (a setting of env/example.env, or a value k3stack computes)"
    ]
    (m,) = mf.render({"HOST": "h", "PORT": "1", "N": "3", "T": "true", "NOPE": "c"}, k8s_dir=tmp_path, targets=["t"])
    assert m.obj["data"] == {"url": "https://h:1/", "n": "3", "t": True, "f": "a\nb c\n"}


def test_an_undefined_variable_in_a_folded_block_names_its_own_line(tmp_path):
    write(
        tmp_path,
        {"t/x.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\ndata:\n  f: >\n    a\n    ${NOPE}\n"},
    )
    with pytest.raises(mf.RenderError) as error:
        mf.render({}, k8s_dir=tmp_path, targets=["t"])
    assert error.value.problems[0].startswith("k8s/t/x.yaml:8: ${NOPE} is not defined")


@pytest.mark.parametrize(
    ("value", "line"),
    [
        (">-\n    a b\n    c\n    x${NOPE}\n", 9),  # folded, stripped
        ("|\n    a\n\n    ${NOPE}\n", 9),  # literal with an empty line
        ("first\n    second\n    ${NOPE}\n", 8),  # plain multi-line: breaks become spaces
        ('"a\n    ${NOPE}"\n', 7),  # double-quoted across lines
        ("|\n    ${NOPE}\n    ${OTHER} ${NOPE}\n", 7),  # the first of two occurrences
        ('"a\n    \\x24{NOPE}"\n', 6),  # written as an escape: the scalar's first line
    ],
)
def test_an_undefined_variable_is_named_on_its_own_line_in_every_scalar_style(tmp_path, value, line):
    write(tmp_path, {"t/x.yaml": f"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\ndata:\n  f: {value}"})
    with pytest.raises(mf.RenderError) as error:
        mf.render({"OTHER": "o"}, k8s_dir=tmp_path, targets=["t"])
    assert error.value.problems[0].startswith(f"k8s/t/x.yaml:{line}: ${{NOPE}} is not defined")


def test_the_second_occurrence_of_a_variable_is_named_on_its_own_line(tmp_path):
    write(tmp_path, {"t/x.yaml": "kind: ConfigMap\ndata:\n  f: >\n    ${NOPE}\n    b\n    ${NOPE}\n"})
    with pytest.raises(mf.RenderError) as error:
        mf.render({}, k8s_dir=tmp_path, targets=["t"])
    assert [p.split(": ")[0] for p in error.value.problems[:2]] == ["k8s/t/x.yaml:4", "k8s/t/x.yaml:6"]


def test_the_gpu_switch_touches_only_ollamas_deployment_and_keeps_its_other_limits():
    def deployment(name, kind="Deployment"):
        pod = {"containers": [{"name": "a", "resources": {"limits": {"memory": "1Gi"}}}, {"name": "b"}]}
        obj = {"apiVersion": "apps/v1", "kind": kind, "metadata": {"name": name}, "spec": {"template": {"spec": pod}}}
        return mf.Manifest(obj, "llm-stack/x.yaml")

    gpu = mf._with_gpu(deployment("ollama"))
    assert gpu.obj["spec"]["template"]["spec"] == {
        "runtimeClassName": "nvidia",
        "containers": [
            {"name": "a", "resources": {"limits": {"memory": "1Gi", "nvidia.com/gpu": 1}}},
            {"name": "b", "resources": {"limits": {"nvidia.com/gpu": 1}}},
        ],
    }
    assert gpu.source == "llm-stack/x.yaml"
    original = deployment("ollama")
    mf._with_gpu(original)
    assert original == deployment("ollama")  # a copy is changed, not the input
    assert mf._with_gpu(deployment("web")) == deployment("web")
    assert mf._with_gpu(deployment("ollama", "StatefulSet")) == deployment("ollama", "StatefulSet")


def test_names_keys_and_yaml_as_kubectl_spells_them():
    obj = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "n"}}
    m = mf.Manifest(obj, "t/x.yaml")
    assert (m.describe(), m.key, m.namespace) == ("deployment.apps/web", ("apps", "Deployment", "n", "web"), "n")
    core = mf.Manifest({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "n"}}, "t/ns.yaml")
    assert (core.describe(), core.key, core.namespace) == ("namespace/n", ("", "Namespace", "", "n"), None)
    assert mf.to_yaml([core, m]) == (
        "---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: n\n"
        "---\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n  namespace: n\n"
    )
    assert mf.to_yaml([]) == ""


def test_yaml_keeps_the_manifests_key_order():
    obj = {"kind": "ConfigMap", "apiVersion": "v1", "metadata": {"name": "x"}, "data": {"z": "1", "a": "2"}}
    assert mf.to_yaml([mf.Manifest(obj, "t/x.yaml")]) == (
        "---\nkind: ConfigMap\napiVersion: v1\nmetadata:\n  name: x\ndata:\n  z: '1'\n  a: '2'\n"
    )


def test_validation_names_each_problem_by_file_object_and_field_and_lists_what_has_no_schema():
    def cm(name, value):
        obj = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": "n"},
            "data": {"a": value},
        }
        return mf.Manifest(obj, f"t/{name}.yaml")

    crd = mf.Manifest(
        {"apiVersion": "traefik.io/v1alpha1", "kind": "Middleware", "metadata": {"name": "m"}}, "t/m.yaml"
    )
    skipped: list[mf.Manifest] = []
    problem = "k8s/t/x.yaml: configmap/x: data.a: 1 is not of type 'string', 'null'"
    assert mf.validate([crd, cm("x", 1), cm("y", "1"), crd, cm("x", 1)], "1.35", skipped) == [problem, problem]
    assert skipped == [crd, crd]  # no schema: skipped, and every one after it still validated
    assert mf.validate([crd, cm("x", 1)], "1.35") == [problem]


def test_keys_list_items_and_folded_blocks_are_rendered_too(tmp_path):
    head = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n"
    write(tmp_path, {"t/x.yaml": head + "data:\n  ${K}: v\n  l: [a, '${V}']\n  f: >\n    ${V}\n"})
    (m,) = mf.render({"K": "key", "V": "val"}, k8s_dir=tmp_path, targets=["t"])
    assert m.obj["data"] == {"key": "v", "l": ["a", "val"], "f": "val\n"}
    with pytest.raises(mf.RenderError) as error:
        mf.render({}, k8s_dir=tmp_path, targets=["t"])
    undefined = "is not defined (a setting of env/example.env, or a value k3stack computes)"
    assert error.value.problems == [
        f"k8s/t/x.yaml:6: ${{K}} {undefined}",
        f"k8s/t/x.yaml:7: ${{V}} {undefined}",
        f"k8s/t/x.yaml:9: ${{V}} {undefined}",  # a folded block's first line
    ]


def test_every_malformed_document_of_a_file_is_reported_and_a_hash_named_yaml_is_skipped(tmp_path):
    write(tmp_path, {"t/a.yaml": "- a\n---\n- b\n", "t/#b.yaml": "not: [valid\n"})
    with pytest.raises(mf.RenderError) as error:
        mf.render({}, k8s_dir=tmp_path, targets=["t"])
    lacks = "a document lacks apiVersion, kind or metadata.name — fix: give every document all three"
    assert error.value.problems == [f"k8s/t/a.yaml:1: {lacks}", f"k8s/t/a.yaml:3: {lacks}"]
    assert [p.name for p in mf.skipped_files(tmp_path, ["t"])] == ["#b.yaml"]
