"""Rendering: plain YAML, folders, Jinja2 templates with values and --set, stdin, hostile input."""
import io

import pytest

from deployer.errors import RenderError, UsageError
from deployer.render import RenderInput, images_from_data, load_values, parse_documents, parse_set, render

CM = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\ndata:\n  k: v\n"


def test_folder_multi_document_sorted_and_filtered(tmp_path):
    (tmp_path / "b.yaml").write_text(CM.format(name="b") + "---\n" + CM.format(name="c") + "---\n")
    (tmp_path / "a.yml").write_text(CM.format(name="a"))
    (tmp_path / "notes.txt").write_text("not a manifest")
    (tmp_path / ".hidden.yaml").write_text("garbage: [")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "d.json").write_text('{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"d"}}')
    out = render(RenderInput([str(tmp_path)]))
    assert [r.name for r in out] == ["a", "b", "c", "d"]
    assert out[1].source.endswith("b.yaml (document 1)")


def test_folder_order_and_a_chain_deeper_than_the_recursion_limit(tmp_path):
    """A folder's files, then each sub-folder in name order, hidden folders left out, at any depth
    (os.walk recursed per level)."""
    import subprocess
    for rel, name in [("z.yaml", "z"), ("a/b/m.yaml", "m"), ("a/k.yaml", "k"), ("b/j.yaml", "j"),
                      (".git/x.yaml", "hidden"), ("a.yaml", "top")]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(CM.format(name=name))
    subprocess.run(["mkdir", "-p", "deep/" + "d/" * 1200], cwd=tmp_path, check=True)
    tmp_path.joinpath("deep", *["d"] * 1200, "bottom.yaml").write_text(CM.format(name="bottom"))
    try:
        out = render(RenderInput([str(tmp_path)]))
        assert [r.name for r in out] == ["top", "z", "k", "m", "j", "bottom"]
    finally:
        subprocess.run(["rm", "-rf", str(tmp_path / "deep")], check=True)   # (pytest's own cleanup recurses)


def test_list_kind_is_expanded():
    text = "apiVersion: v1\nkind: List\nitems:\n- " + CM.format(name="x").replace("\n", "\n  ")
    assert [r.name for r in parse_documents(text, "s")] == ["x"]


def test_template_with_values_set_and_images(tmp_path):
    (tmp_path / "values.yaml").write_text("replicas: 1\nimage: {tag: v1}\n")
    (tmp_path / "manifests").mkdir()
    (tmp_path / "manifests" / "app.yaml.j2").write_text(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {{ release }}-web\n"
        "spec:\n  replicas: {{ values.replicas }}\n  template:\n    spec:\n      containers:\n"
        "      - name: app\n        image: {{ images.web }}\n        env:\n        - {name: TAG, value: \"{{ values.image.tag }}\"}\n"
        "        - {name: DEBUG, value: \"{{ values.debug }}\"}\n")
    out = render(RenderInput([str(tmp_path / "manifests")], [str(tmp_path / "values.yaml")],
                             ["replicas=3", "image.tag=v2", "debug=true"], {"web": "reg/web@sha256:ab"}, release="shop"))
    [dep] = out
    assert dep.name == "shop-web"
    assert dep.body["spec"]["replicas"] == 3
    container = dep.body["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "reg/web@sha256:ab"
    assert container["env"] == [{"name": "TAG", "value": "v2"}, {"name": "DEBUG", "value": "True"}]


def test_undefined_value_names_file_and_line(tmp_path):
    tpl = tmp_path / "cm.yaml.j2"
    tpl.write_text("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\ndata:\n  k: \"{{ values.missing }}\"\n")
    with pytest.raises(RenderError) as exc:
        render(RenderInput([str(tpl)]))
    assert f"{tpl}:6" in str(exc.value) and "missing" in str(exc.value) and "--set" in str(exc.value)


@pytest.mark.parametrize("expr", ["images.api", "images['api']", "images.api.digest"])
def test_unknown_image_names_the_known_images(tmp_path, expr):
    tpl = tmp_path / "deploy.yaml.j2"
    tpl.write_text("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\ndata:\n  k: \"{{ %s }}\"\n" % expr)
    with pytest.raises(RenderError) as exc:
        render(RenderInput([str(tpl)], images={"web": "r/web:1", "worker": "r/worker:1"}))
    assert f"{tpl}:6" in str(exc.value)
    assert "no image 'api'; the images are: web, worker" in str(exc.value) and "--values" not in str(exc.value)


def test_template_syntax_error_names_line(tmp_path):
    tpl = tmp_path / "cm.yaml.j2"
    tpl.write_text("a: 1\nb: {{ oops\n")
    with pytest.raises(RenderError, match=r"cm.yaml.j2:2: template syntax error"):
        render(RenderInput([str(tpl)]))


def test_sandbox_blocks_python_internals(tmp_path):
    tpl = tmp_path / "x.yaml.j2"
    tpl.write_text("a: {{ ''.__class__.__mro__[1].__subclasses__() }}\n")
    with pytest.raises(RenderError):
        render(RenderInput([str(tpl)]))


def test_stdin():
    out = render(RenderInput(["-"]), stdin=io.StringIO(CM.format(name="piped")))
    assert [r.name for r in out] == ["piped"]


@pytest.mark.parametrize("text,message", [
    ("kind: ConfigMap\nmetadata: {name: a}\n", "missing apiVersion"),
    ("apiVersion: v1\nkind: ConfigMap\nmetadata: {}\n", "no metadata.name"),
    ("apiVersion: v1\nkind: Pod\nmetadata: {generateName: x-}\n", "generateName is not supported"),
    ("- a\n- b\n", "must be a mapping"),
    ("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n  labels: {n: 1}\n", "must be strings"),
    ("a: [1,\nb: 2\n", r"s:\d+: invalid YAML"),
    ("a: " + "[" * 5000 + "]" * 5000 + "\n", r"s(:\d+)?: invalid YAML"),   # deeper than any parser follows
    ("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\ndata: " + "[" * 300 + "]" * 300 + "\n",
     "nested deeper than 200 levels"),
])
def test_bad_manifests(text, message):
    with pytest.raises(RenderError, match=message):
        parse_documents(text, "s")


def test_yaml_alias_bomb_is_refused():
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i-1}"] * 10) + "]")
    text = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: bomb}\n" + "\n".join(lines) + "\n"
    with pytest.raises(RenderError, match="aliases are expanded"):
        parse_documents(text, "bomb.yaml")


SET_CASES = [
    ("a=1", ["a"], 1),
    ("a.b.c=true", ["a", "b", "c"], True),
    ("tag=v1.2", ["tag"], "v1.2"),
    ("tag='007'", ["tag"], "007"),
    ("x=", ["x"], ""),
    ("x=null", ["x"], None),
    ("list=[a, b]", ["list"], ["a", "b"]),
    (r"ann.kade\.io/weight=5", ["ann", "kade.io/weight"], 5),
    ("url=http://x?a=b", ["url"], "http://x?a=b"),
]


@pytest.mark.parametrize("item,path,value", SET_CASES, ids=[c[0] for c in SET_CASES])
def test_parse_set(item, path, value):
    assert parse_set(item) == (path, value)


@pytest.mark.parametrize("item", ["novalue", "a..b=1", ".a=1"])
def test_bad_set(item):
    with pytest.raises(UsageError):
        parse_set(item)


def test_values_merge_deep_and_set_overrides(tmp_path):
    (tmp_path / "1.yaml").write_text("a: {b: 1, c: 2}\nlist: [1]\n")
    (tmp_path / "2.yaml").write_text("a: {c: 3}\nlist: [2]\n")
    values = load_values([str(tmp_path / "1.yaml"), str(tmp_path / "2.yaml")], ["a.d=4", "a.b.x=5"])
    assert values == {"a": {"b": {"x": 5}, "c": 3, "d": 4}, "list": [2]}


def test_images_from_build_record_and_mapping():
    record = {"images": [{"name": "web", "repository": "r:5000/web", "digest": "sha256:aa", "tags": ["v1"]},
                         {"repository": "r:5000/x", "tags": ["t"]}]}
    assert images_from_data(record, "rec") == {"web": "r:5000/web@sha256:aa", "default": "r:5000/x:t"}
    assert images_from_data({"web": "a/b:c"}, "m") == {"web": "a/b:c"}
    with pytest.raises(UsageError):
        images_from_data([1, 2], "bad")


def test_an_unquoted_date_is_the_string_written_as_kubectl_reads_it():
    """`released: 2024-01-01` is a string to kubectl (yaml.v2 keeps timestamps as written); PyYAML made
    a date, which the annotation check refused ("quote them") and a JSON body could not hold."""
    import json

    text = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: d\n  annotations: {released: 2024-01-01}\n" \
           "data: {day: 2024-01-01, key: !!binary aGVsbG8=}\n"
    (doc,) = parse_documents(text, "cm.yaml")
    assert doc.body["metadata"]["annotations"] == {"released": "2024-01-01"}
    assert json.loads(json.dumps(doc.body))["data"] == {"day": "2024-01-01", "key": "hello"}


def test_a_manifest_or_include_that_a_symlink_leads_out_of_the_folder_is_refused(tmp_path):
    """A repository's manifests folder must not pull this machine's files into what is applied: a
    symlinked manifest and a symlinked {% include %} leading out of the folder are refused, unread."""
    secret = tmp_path / "host-secret"
    secret.write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: stolen}\ndata: {x: s3cr3t}\n")
    folder = tmp_path / "manifests"
    folder.mkdir()
    (folder / "ok.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: ok}\n")
    (folder / "inner.txt").write_text("fine")
    (folder / "evil.yaml").symlink_to(secret)
    with pytest.raises(RenderError, match="a symlink out of") as info:
        render(RenderInput([str(folder)], [], [], {}, "r", "ns"))
    assert "s3cr3t" not in str(info.value)
    (folder / "evil.yaml").unlink()
    (folder / "leak.txt").symlink_to(secret)
    (folder / "cm.yaml.j2").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: t}\n"
                                       "data: {a: \"{% include 'inner.txt' %}\", b: \"{% include 'leak.txt' %}\"}\n")
    with pytest.raises(RenderError, match="leak.txt leads out of") as info:
        render(RenderInput([str(folder)], [], [], {}, "r", "ns"))
    assert "s3cr3t" not in str(info.value)
    (folder / "cm.yaml.j2").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: t}\n"
                                       "data: {a: \"{% include 'inner.txt' %}\"}\n")
    assert {r.name for r in render(RenderInput([str(folder)], [], [], {}, "r", "ns"))} == {"ok", "t"}
