"""The example workflow and the workflow patcher."""
import copy
import json
import os
import threading

import pytest

from helpers import REPO, SHARED
from wanvideo_vae.cli import main as cli_main
from wanvideo_vae.comfy_nodes import NODE_CLASS_MAPPINGS
from wanvideo_vae.workflow import patch_workflow

EXAMPLE = os.path.join(REPO, "workflows", "wanvideo_InfiniteTalk_native_exact.json")
PUBLIC = os.path.join(SHARED, "reference", "wanvideo_I2V_InfiniteTalk_example_02.json")
WIDGET_KINDS = {"INT", "FLOAT", "BOOLEAN", "STRING"}


def load(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def check_links(wf):
    nodes = {n["id"]: n for n in wf["nodes"]}
    assert len(nodes) == len(wf["nodes"]), "duplicate node ids"
    link_ids = set()
    for link_id, src, src_slot, dst, dst_slot, kind in wf["links"]:
        link_ids.add(link_id)
        out = nodes[src]["outputs"][src_slot]
        inp = nodes[dst]["inputs"][dst_slot]
        assert link_id in out["links"] and inp["link"] == link_id
        assert len({out["type"], inp["type"], kind} - {"*"}) <= 1  # "*": a wildcard socket (Set/Get nodes)
    for n in wf["nodes"]:
        for inp in n.get("inputs", []):
            assert inp["link"] is None or inp["link"] in link_ids
        for out in n.get("outputs", []):
            assert all(link in link_ids for link in out.get("links") or [])
    assert wf["last_link_id"] >= max(link_ids) and wf["last_node_id"] >= max(nodes)


def widget_inputs(cls):
    spec = cls.INPUT_TYPES()
    entries = list(spec.get("required", {}).items()) + list(spec.get("optional", {}).items())
    return [(name, e) for name, e in entries if isinstance(e[0], list) or e[0] in WIDGET_KINDS]


def check_widgets(node):
    widgets = widget_inputs(NODE_CLASS_MAPPINGS[node["type"]])
    values = node.get("widgets_values", [])
    assert len(values) == len(widgets), node["type"]
    for (name, (kind, *opts)), v in zip(widgets, values):
        o = opts[0] if opts else {}
        if isinstance(kind, list):
            assert v in kind, name
        elif kind == "INT":
            assert isinstance(v, int) and o["min"] <= v <= o["max"] and (v - o["min"]) % o.get("step", 1) == 0, name
        elif kind == "BOOLEAN":
            assert isinstance(v, bool), name


def test_example_workflow_is_consistent():
    wf = load(EXAMPLE)
    assert wf["version"] == 0.4
    check_links(wf)
    ours = [n for n in wf["nodes"] if n["properties"].get("cnr_id") == "wanvideo-vae"]
    assert {n["type"] for n in ours} == {"WanVideoNativeDecode", "WanVideoNativeVAEPatch"}
    for n in ours:
        assert n["type"] in NODE_CLASS_MAPPINGS
        check_widgets(n)
    types = {n["type"] for n in wf["nodes"]}
    assert "WanVideoDecode" not in types and "WanVideoSampler" in types and "MultiTalkWav2VecEmbeds" in types
    # the sampler's own decodes go through the patched VAE
    patch = next(n for n in wf["nodes"] if n["type"] == "WanVideoNativeVAEPatch")
    i2v = next(n for n in wf["nodes"] if n["type"] == "WanVideoImageToVideoMultiTalk")
    assert i2v["inputs"][0]["link"] in patch["outputs"][0]["links"]


def test_public_workflow_is_consistent_too():
    check_links(load(PUBLIC))


def test_patch_public_workflow_rewrites_the_decode_node_and_patches_the_vae(tmp_path, capsys):
    """The public InfiniteTalk workflow: its VAE loader feeds a SetNode, whose GetNodes feed the decode
    node and the sampler's image-to-video node (whose VAE the sampler decodes each window with)."""
    original = load(PUBLIC)
    out = tmp_path / "patched.json"
    assert cli_main(["patch-workflow", PUBLIC, str(out)]) == 0
    assert "1 WanVideoDecode node(s)" in capsys.readouterr().out
    patched = load(out)
    same = ("nodes", "links", "last_node_id", "last_link_id")
    assert {k: v for k, v in patched.items() if k not in same} == {k: v for k, v in original.items() if k not in same}
    before_nodes = {n["id"]: n for n in original["nodes"]}
    after_nodes = {n["id"]: n for n in patched["nodes"]}
    added = set(after_nodes) - set(before_nodes)
    assert len(added) == 1 and patched["last_node_id"] == original["last_node_id"] + 1
    patch = after_nodes[added.pop()]
    assert patch["type"] == "WanVideoNativeVAEPatch"
    loader = next(n for n in original["nodes"] if n["type"] == "WanVideoVAELoader")
    (old_link,) = loader["outputs"][0]["links"]
    new_link = patched["last_link_id"]
    assert after_nodes[loader["id"]]["outputs"][0]["links"] == [new_link]
    assert patch["inputs"][0]["link"] == new_link and patch["outputs"][0]["links"] == [old_link]
    links = {link[0]: link for link in patched["links"]}
    assert links[new_link] == [new_link, loader["id"], 0, patch["id"], 0, "WANVAE"]
    assert links[old_link][1:3] == [patch["id"], 0]  # the SetNode's link now leaves the patch node
    assert {k: v for k, v in links.items() if k not in (old_link, new_link)} == \
        {link[0]: link for link in original["links"] if link[0] != old_link}
    changed = 0
    for nid, before in before_nodes.items():
        after = after_nodes[nid]
        if before["type"] == "WanVideoDecode":
            changed += 1
            assert after["type"] == "WanVideoNativeDecode"
            assert after["properties"]["Node name for S&R"] == "WanVideoNativeDecode"
            strip = lambda n: {k: v for k, v in n.items() if k not in ("type", "properties")}  # noqa: E731
            assert strip(after) == strip(before)
            check_widgets(after)
        elif nid == loader["id"]:
            assert {k: v for k, v in after.items() if k != "outputs"} == {k: v for k, v in before.items() if k != "outputs"}
        else:
            assert after == before
    assert changed == 1
    check_links(patched)
    check_widgets(patch)
    again = copy.deepcopy(patched)  # patched twice: the loader already feeds a patch node
    assert patch_workflow(again) == (0, 0, 0, 0, 0, 0) and again == patched


def test_patch_public_workflow_decode_only(tmp_path):
    out = tmp_path / "patched.json"
    assert cli_main(["patch-workflow", "--decode-only", PUBLIC, str(out)]) == 0
    original, patched = load(PUBLIC), load(out)
    assert len(patched["nodes"]) == len(original["nodes"]) and patched["links"] == original["links"]


def test_patch_api_format():
    api = {"1": {"class_type": "WanVideoDecode", "inputs": {"vae": ["2", 0], "tile_x": 272}},
           "2": {"class_type": "WanVideoVAELoader", "inputs": {}},
           "5": {"class_type": "WanVideoImageToVideoMultiTalk", "inputs": {"vae": ["2", 0], "width": 832}}}
    patched = copy.deepcopy(api)
    assert patch_workflow(patched) == (1, 1, 0, 0, 0, 0)
    assert patched["1"]["class_type"] == "WanVideoNativeDecode"
    assert patched["1"]["inputs"] == {"vae": ["6", 0], "tile_x": 272}
    assert patched["5"]["inputs"] == {"vae": ["6", 0], "width": 832}
    assert patched["6"]["class_type"] == "WanVideoNativeVAEPatch" and patched["6"]["inputs"] == {"vae": ["2", 0]}
    assert patched["2"] == api["2"]
    again = copy.deepcopy(patched)
    assert patch_workflow(again) == (0, 0, 0, 0, 0, 0) and again == patched
    decode_only = copy.deepcopy(api)
    assert patch_workflow(decode_only, vae_patch=False) == (1, 0, 0, 0, 0, 0) and decode_only["1"]["inputs"] == api["1"]["inputs"]


def test_loaders_in_subgraphs_are_patched_there(tmp_path, capsys):
    """A loader inside a subgraph definition (every instance of it): the patch node joins that subgraph,
    its link an object as the subgraph's are, its id and its link's past every id of the workflow's
    graphs and counters (ComfyUI numbers a subgraph's from the top-level graph's), whose counters, and
    the subgraph's copy of them, follow. Loaders inside legacy group nodes are reported, not patched."""
    link = {"id": 5, "origin_id": 1, "origin_slot": 0, "target_id": 2, "target_slot": 0, "type": "WANVAE"}
    sub = {"id": "sub-1", "state": {"lastNodeId": 9, "lastLinkId": 5},
           "nodes": [{"id": 1, "type": "WanVideoVAELoader", "widgets_values": ["Wan2_1_VAE_bf16.safetensors"],
                      "outputs": [{"name": "vae", "type": "WANVAE", "links": [5]}]},
                     {"id": 2, "type": "WanVideoDecode", "inputs": [{"name": "vae", "type": "WANVAE", "link": 5}],
                      "outputs": []},
                     {"id": 12, "type": "Note", "outputs": []}],
           "links": [link]}
    ui = {"nodes": [{"id": 3, "type": "sub-1", "outputs": []}], "links": [[7, 3, 0, 3, 0, "X"]],
          "last_node_id": 9, "last_link_id": 7, "definitions": {"subgraphs": [sub]}}
    assert patch_workflow(ui) == (1, 1, 0, 0, 0, 0)
    nodes = {n["id"]: n for n in ui["definitions"]["subgraphs"][0]["nodes"]}
    patch = nodes[13]
    assert patch["type"] == "WanVideoNativeVAEPatch" and nodes[2]["type"] == "WanVideoNativeDecode"
    links = {lk["id"]: lk for lk in ui["definitions"]["subgraphs"][0]["links"]}
    assert links[8] == {"id": 8, "origin_id": 1, "origin_slot": 0, "target_id": 13, "target_slot": 0, "type": "WANVAE"}
    assert (links[5]["origin_id"], links[5]["target_id"]) == (13, 2)
    assert nodes[1]["outputs"][0]["links"] == [8] and patch["inputs"][0]["link"] == 8 and patch["outputs"][0]["links"] == [5]
    assert (ui["last_node_id"], ui["last_link_id"]) == (13, 8)
    assert ui["definitions"]["subgraphs"][0]["state"] == {"lastNodeId": 13, "lastLinkId": 8}
    assert ui["nodes"] == [{"id": 3, "type": "sub-1", "outputs": []}] and ui["links"] == [[7, 3, 0, 3, 0, "X"]]
    again = copy.deepcopy(ui)
    assert patch_workflow(again) == (0, 0, 0, 0, 0, 0) and again == ui
    grouped = {"nodes": [], "links": [], "extra": {"groupNodes": {"g": {"nodes": [
        {"id": 1, "type": "WanVideoVAELoader", "outputs": [{"name": "vae", "type": "WANVAE", "links": []}]}]}}}}
    src = tmp_path / "group.json"
    src.write_text(json.dumps(grouped))
    assert cli_main(["patch-workflow", str(src), str(tmp_path / "o.json")]) == 0
    assert "1 VAE loader(s) inside legacy group nodes were not looked at" in capsys.readouterr().out
    assert load(tmp_path / "o.json") == grouped


def test_patch_workflow_bad_input(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert cli_main(["patch-workflow", str(bad), str(tmp_path / "o.json")]) == 2
    assert "not valid JSON" in capsys.readouterr().err
    assert cli_main(["patch-workflow", str(tmp_path / "missing.json"), str(tmp_path / "o.json")]) == 2
    with pytest.raises(ValueError):
        patch_workflow({"a": 1})


def test_patched_nodes_drop_the_source_packs_identity():
    """aux_id (an unregistered pack's GitHub repo) and ver name WanVideoWrapper; kept on the native node,
    ComfyUI's manager would offer to install the wrapper for it."""
    ui = {"nodes": [{"id": 1, "type": "WanVideoDecode", "properties": {"aux_id": "kijai/ComfyUI-WanVideoWrapper",
                                                                         "ver": "abc123"}},
                    {"id": 2, "type": "WanVideoDecode", "properties": {"cnr_id": "ComfyUI-WanVideoWrapper",
                                                                         "ver": "1.2.3"}}],
          "definitions": None}
    assert patch_workflow(ui).decode_nodes == 2
    assert ui["nodes"][0]["properties"] == {"Node name for S&R": "WanVideoNativeDecode"}
    assert ui["nodes"][1]["properties"] == {"Node name for S&R": "WanVideoNativeDecode", "cnr_id": "wanvideo-vae"}
    assert patch_workflow({"nodes": None, "definitions": {"subgraphs": None}}) == (0, 0, 0, 0, 0, 0)


def test_the_example_workflow_needs_no_patching():
    wf = load(EXAMPLE)
    assert patch_workflow(wf) == (0, 0, 0, 0, 0, 0) and wf == load(EXAMPLE)


def test_the_patch_node_has_its_own_order_and_place(tmp_path):
    out = tmp_path / "patched.json"
    assert cli_main(["patch-workflow", PUBLIC, str(out)]) == 0
    patched = load(out)
    patch = next(n for n in patched["nodes"] if n["type"] == "WanVideoNativeVAEPatch")
    orders = [n["order"] for n in patched["nodes"] if "order" in n]
    assert orders.count(patch["order"]) == 1 and patch["order"] == max(orders)
    x, y = patch["pos"]
    w, h = patch["size"]
    for n in patched["nodes"]:
        if n is patch or "pos" not in n or "size" not in n:
            continue
        nx, ny = n["pos"][:2]
        nw, nh = n["size"][:2]
        assert not (x < nx + nw and nx < x + w and y < ny + nh and ny < y + h), n["id"]  # covers no node


def test_loaders_of_a_wan22_vae_are_left_alone(tmp_path, capsys):
    """The native nodes refuse the Wan 2.2 VAE (its decoder is not this one): a patched Wan 2.2 workflow
    would stop before sampling, or at its decode. Known by the loader's file name; its decode, fed
    through a SetNode / GetNode pair in the public workflow, stays the wrapper's."""
    ui = load(PUBLIC)
    loader = next(n for n in ui["nodes"] if n["type"] == "WanVideoVAELoader")
    loader["widgets_values"][0] = "wanvideo\\\\Wan2_2_VAE_bf16.safetensors"
    src = tmp_path / "wan22.json"
    src.write_text(json.dumps(ui))
    assert cli_main(["patch-workflow", str(src), str(tmp_path / "o.json")]) == 0
    said = capsys.readouterr().out
    assert "1 loader(s) of a Wan 2.2 VAE were left as they are" in said and "go through" not in said
    assert "0 WanVideoDecode node(s) now use" in said and "1 WanVideoDecode node(s) were left as they are" in said
    assert load(tmp_path / "o.json") == ui
    api = {"1": {"class_type": "WanVideoVAELoader", "inputs": {"model_name": "wan2.2_vae.safetensors"}},
           "2": {"class_type": "WanVideoDecode", "inputs": {"vae": ["1", 0]}}}
    assert patch_workflow(api) == (0, 0, 0, 1, 1, 0) and api["2"] == {"class_type": "WanVideoDecode",
                                                                    "inputs": {"vae": ["1", 0]}}
    for name in ("Wan22_VAE_fp32.safetensors", "wan2.2-vae.pth", "vae_wan_2.2.safetensors", "VAE\\Wan2_2_VAE.pth",
                 "wan_vae_2.2.safetensors", "vae_2.2_wan.safetensors"):  # a 2.2 without a 2.1, as core loaders read it
        assert patch_workflow({"1": {"class_type": "WanVideoVAELoader", "inputs": {"model_name": name}},
                               "2": {"class_type": "WanVideoSampler", "inputs": {"vae": ["1", 0]}}}) == (0, 0, 0, 1, 0, 0)
    for name in ("Wan2_1_VAE_bf16.safetensors", "wan_2.1_vae.safetensors", "wan2.1_vae_fp32.safetensors",
                 "Wan2_1_VAE_2022.safetensors", "wan2.1_vae_v22.pth", "wan2.2\\Wan2_1_VAE.pth",
                 "Wan2_25_VAE.safetensors", "wan220_vae.pth"):  # 2.2 followed by a digit is not 2.2
        assert patch_workflow({"1": {"class_type": "WanVideoVAELoader", "inputs": {"model_name": name}},
                               "2": {"class_type": "WanVideoSampler", "inputs": {"vae": ["1", 0]}}}).vae_patches == 1
    # a value that says wan2.2 but names no VAE file (a note, a compile option) does not make the loader's
    api = {"1": {"class_type": "WanVideoVAELoader",
                 "inputs": {"model_name": "Wan2_1_VAE_bf16.safetensors", "precision": "bf16", "note": "wan2.2 speedup"}},
           "2": {"class_type": "WanVideoDecode", "inputs": {"vae": ["1", 0]}}}
    assert patch_workflow(api) == (1, 1, 0, 0, 0, 0)


def test_a_workflow_with_nothing_to_patch_is_left_as_it_was():
    for wf in ({"nodes": [], "last_node_id": 0}, {"nodes": [{"id": 1, "type": "WanVideoVAELoader", "outputs": []}]}):
        before = copy.deepcopy(wf)
        assert patch_workflow(wf) == (0, 0, 0, 0, 0, 0) and wf == before


@pytest.mark.parametrize("wf,says", [
    ({"nodes": "x"}, "'nodes' is not a list of objects"),
    ({"nodes": [1, 2]}, "'nodes' is not a list of objects"),
    ({"nodes": [], "definitions": {"subgraphs": "x"}}, "'definitions.subgraphs' is not a list of objects"),
    ({"nodes": [], "definitions": {"subgraphs": [{"nodes": [3]}]}}, "subgraph 0's 'nodes' is not a list"),
    ({"nodes": [{"id": 1, "type": "WanVideoVAELoader", "outputs": {"a": 1}}]}, "node 1 of 'nodes' has outputs"),
    ({"nodes": [{"id": 1, "outputs": [{"links": 5}]}]}, "an output of node 1 of 'nodes' has links"),
    ({"nodes": [{"id": 1, "type": "WanVideoDecode", "properties": []}]}, "node 1 of 'nodes' has properties"),
    ({"nodes": [], "links": {}}, "'links' is not a list"),
    ({"nodes": [], "last_node_id": "7"}, "'last_node_id' is not a number"),
    ({"nodes": [], "state": [3]}, "'state' is not an object"),
    ({"1": {"class_type": 5}}, "node '1' has a class_type that is not a string"),
    ({"1": {"class_type": "WanVideoDecode", "inputs": [1]}}, "node '1' has inputs that are not an object"),
    # deeper: found as it is read (the loader's link id is a list, which no id can be)
    ({"nodes": [{"id": 1, "type": "WanVideoVAELoader", "outputs": [{"type": "WANVAE", "links": [[1]]}]}],
      "links": [[1, 1, 0, 2, 0, "WANVAE"]]}, "TypeError"),
])
def test_workflows_it_cannot_read_are_a_value_error_saying_why(wf, says):
    with pytest.raises(ValueError, match="not a ComfyUI workflow this tool can read") as e:
        patch_workflow(wf)
    assert says in str(e.value)


def test_the_public_workflow_with_positions_saved_as_objects(tmp_path):
    """Some ComfyUI versions save pos and size as {"0": x, "1": y}: read as the lists are."""
    ui = load(PUBLIC)
    for n in ui["nodes"]:
        for key in ("pos", "size"):
            if isinstance(n.get(key), list):
                n[key] = {"0": n[key][0], "1": n[key][1]}
    assert patch_workflow(ui).vae_patches == 1


def test_patch_workflow_files(tmp_path, capsys):
    """A byte order mark (Notepad's UTF-8) is read; text that is not UTF-8, JSON nested past reading, and a
    destination that cannot be written each give one line naming the file concerned; a workflow patched
    in place is replaced in one step."""
    wf = json.dumps(load(PUBLIC))
    bom = tmp_path / "bom.json"
    bom.write_bytes(b"\xef\xbb\xbf" + wf.encode("utf-8"))
    assert cli_main(["patch-workflow", str(bom), str(bom)]) == 0  # in place
    assert any(n["type"] == "WanVideoNativeDecode" for n in load(bom)["nodes"])
    assert sorted(os.listdir(tmp_path)) == ["bom.json"]
    capsys.readouterr()
    out = tmp_path / "o.json"
    cases = [  # (source's bytes, its name, destination, the file the error names, what it says)
        (b"\x93NUMPY\x01\x00", "latin.json", out, "latin.json", "not a JSON text file"),
        (b"[" * 100000 + b"]" * 100000, "deep.json", out, "deep.json", "nested too deeply"),
        (wf.encode("utf-8"), "ok.json", tmp_path / "missing" / "o.json", os.path.join("missing", "o.json"), "does not exist"),
        (wf.encode("utf-8"), "ok2.json", tmp_path, "", "is a folder"),
    ]
    for data, name, dst, named, says in cases:
        (tmp_path / name).write_bytes(data)
        assert cli_main(["patch-workflow", str(tmp_path / name), str(dst)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"error: {os.path.join(str(tmp_path), named) if named else tmp_path}: ") and says in err
        assert "\n" not in err, err
    assert not (tmp_path / "o.json").exists()


def test_the_patch_node_sits_right_of_its_loader():
    from wanvideo_vae.workflow import patch_workflow
    wf = load(PUBLIC)
    patch_workflow(wf)
    loader = next(n for n in wf["nodes"] if n["type"] == "WanVideoVAELoader")
    patch = next(n for n in wf["nodes"] if n["type"] == "WanVideoNativeVAEPatch")
    assert patch["pos"][0] == loader["pos"][0] + loader["size"][0] + 30


def test_the_patch_node_takes_its_loaders_mode():
    from wanvideo_vae.workflow import patch_workflow
    wf = load(PUBLIC)
    next(n for n in wf["nodes"] if n["type"] == "WanVideoVAELoader")["mode"] = 4  # bypassed
    patch_workflow(wf)
    assert next(n for n in wf["nodes"] if n["type"] == "WanVideoNativeVAEPatch")["mode"] == 4


def test_api_links_with_integer_node_ids_are_patched():
    from wanvideo_vae.workflow import patch_workflow
    api = {"1": {"class_type": "WanVideoVAELoader", "inputs": {}},
           "2": {"class_type": "WanVideoSampler", "inputs": {"vae": [1, 0]}}}
    assert patch_workflow(api).vae_patches == 1 and api["2"]["inputs"]["vae"] == ["3", 0]


def _ui_chain(*types, widgets=None):
    """A top-level UI graph: nodes 1..n of these types, each one's output linked to the next one's
    first input ('vae' for the last); widgets: {node id: widgets_values}."""
    nodes, links = [], []
    for i, kind in enumerate(types, start=1):
        node = {"id": i, "type": kind, "inputs": [], "outputs": [], "widgets_values": (widgets or {}).get(i, [])}
        if i > 1:
            node["inputs"] = [{"name": "vae" if i == len(types) else "value", "type": "WANVAE", "link": i - 1}]
        if i < len(types):
            node["outputs"] = [{"name": "vae", "type": "WANVAE", "links": [i]}]
            links.append([i, i, 0, i + 1, 0, "WANVAE"])
        nodes.append(node)
    return {"nodes": nodes, "links": links, "last_node_id": len(nodes), "last_link_id": len(links)}


@pytest.mark.parametrize("loader", ["WanVideoTinyVAELoader", "WanVideoFlashVSRDecoderLoader"])
def test_decodes_of_a_taehv_tiny_decoder_stay_the_wrappers(loader, tmp_path, capsys):
    """The native decode refuses the wrapper's TAEHV decoders (its tiny VAE, FlashVSR's): such a decode,
    traced back through Reroutes, is left as it is, and said so; a decode of a Wan 2.1 VAE is converted,
    and so is one whose source is not in its graph (unlinked)."""
    for chain in ([loader, "WanVideoDecode"], [loader, "Reroute", "Reroute", "WanVideoDecode"]):
        ui = _ui_chain(*chain)
        before = copy.deepcopy(ui)
        assert patch_workflow(ui) == (0, 0, 0, 0, 1, 0) and ui == before
    api = {"1": {"class_type": loader, "inputs": {"model_name": "taew2_1.safetensors"}},
           "2": {"class_type": "WanVideoDecode", "inputs": {"vae": ["1", 0]}},
           "3": {"class_type": "WanVideoDecode", "inputs": {"vae": ["4", 0]}},
           "4": {"class_type": "WanVideoVAELoader", "inputs": {"model_name": "Wan2_1_VAE_bf16.safetensors"}}}
    assert patch_workflow(api) == (1, 1, 0, 0, 1, 0)
    assert api["2"]["class_type"] == "WanVideoDecode" and api["3"]["class_type"] == "WanVideoNativeDecode"
    unlinked = {"nodes": [{"id": 1, "type": "WanVideoDecode", "inputs": [{"name": "vae", "type": "WANVAE",
                                                                          "link": None}]}]}
    assert patch_workflow(copy.deepcopy(unlinked)) == (1, 0, 0, 0, 0, 0)
    unlinked["nodes"].append({"id": 2, "type": loader, "widgets_values": ["taew2_1.safetensors"]})
    assert patch_workflow(unlinked) == (0, 0, 0, 0, 1, 0)  # untraced, beside a refused VAE: kept
    src = tmp_path / "w.json"
    src.write_text(json.dumps(_ui_chain(loader, "WanVideoDecode")))
    assert cli_main(["patch-workflow", str(src), str(tmp_path / "o.json")]) == 0
    said = capsys.readouterr().out
    assert "1 WanVideoDecode node(s) were left as they are: their VAE is, or may be, one this decoder does not " \
        "implement" in said


def test_a_decode_fed_through_set_and_get_nodes_is_traced_to_its_loader():
    ui = _ui_chain("WanVideoVAELoader", "SetNode", widgets={1: ["Wan2_2_VAE_bf16.safetensors"], 2: ["VAE"]})
    ui["nodes"].append({"id": 3, "type": "GetNode", "widgets_values": ["VAE"],
                        "outputs": [{"name": "WANVAE", "type": "WANVAE", "links": [2]}]})
    ui["nodes"].append({"id": 4, "type": "WanVideoDecode", "inputs": [{"name": "vae", "type": "WANVAE", "link": 2}]})
    ui["links"].append([2, 3, 0, 4, 0, "WANVAE"])
    assert patch_workflow(ui).decodes_kept == 1 and ui["nodes"][3]["type"] == "WanVideoDecode"
    ui["nodes"][0]["widgets_values"] = ["Wan2_1_VAE_bf16.safetensors"]
    assert patch_workflow(ui)[:2] == (1, 1) and ui["nodes"][3]["type"] == "WanVideoNativeDecode"


def test_a_schema_version_1_workflow_is_patched_with_links_as_objects():
    """Version 1 of the workflow schema keeps links as objects and its id counters in 'state'."""
    ui = _ui_chain("WanVideoVAELoader", "WanVideoDecode")
    ui["version"] = 1
    ui["links"] = [dict(zip(("id", "origin_id", "origin_slot", "target_id", "target_slot", "type"), link))
                   for link in ui["links"]]
    ui["state"] = {"lastNodeId": 2, "lastLinkId": 1, "lastGroupId": 0, "lastRerouteId": 0}
    del ui["last_node_id"], ui["last_link_id"]
    assert patch_workflow(ui) == (1, 1, 0, 0, 0, 0)
    patch = next(n for n in ui["nodes"] if n["type"] == "WanVideoNativeVAEPatch")
    assert patch["id"] == 3 and ui["state"]["lastNodeId"] == 3 and ui["state"]["lastLinkId"] == 2
    assert "last_node_id" not in ui
    links = {link["id"]: link for link in ui["links"]}
    assert links[2] == {"id": 2, "origin_id": 1, "origin_slot": 0, "target_id": 3, "target_slot": 0, "type": "WANVAE"}
    assert (links[1]["origin_id"], links[1]["origin_slot"], links[1]["target_id"]) == (3, 0, 2)
    assert ui["nodes"][0]["outputs"][0]["links"] == [2] and patch["outputs"][0]["links"] == [1]
    again = copy.deepcopy(ui)
    assert patch_workflow(again) == (0, 0, 0, 0, 0, 0) and again == ui


def test_new_ids_pass_the_workflows_counters():
    """ComfyUI never hands out an id again, even one whose node or link was deleted: the patch node and
    its link take ids past the counters (last_node_id / last_link_id, or in schema version 1 the
    'state' ones), not just past the ids in use."""
    ui = _ui_chain("WanVideoVAELoader", "WanVideoDecode")
    ui["last_node_id"], ui["last_link_id"] = 50, 70
    patch_workflow(ui)
    assert (ui["nodes"][-1]["id"], ui["links"][-1][0]) == (51, 71)
    assert (ui["last_node_id"], ui["last_link_id"]) == (51, 71)
    v1 = _ui_chain("WanVideoVAELoader", "WanVideoDecode")
    del v1["last_node_id"], v1["last_link_id"]
    v1["state"] = {"lastNodeId": 40, "lastLinkId": 60}
    patch_workflow(v1)
    assert (v1["nodes"][-1]["id"], v1["links"][-1][0]) == (41, 61) and v1["state"] == {"lastNodeId": 41,
                                                                                        "lastLinkId": 61}


def test_only_a_loaders_wanvae_output_is_patched_from_its_own_slot():
    """A loader whose WANVAE output is not its first (an output of another type before it): the patch
    node takes that output, from its slot; the other output's links are left alone."""
    ui = _ui_chain("WanVideoVAELoader", "WanVideoDecode")
    loader = ui["nodes"][0]
    loader["outputs"].insert(0, {"name": "device", "type": "STRING", "links": [9]})
    ui["links"][0][2] = 1
    ui["nodes"].append({"id": 3, "type": "ShowText", "inputs": [{"name": "text", "type": "STRING", "link": 9}]})
    ui["links"].append([9, 1, 0, 3, 0, "STRING"])
    ui["last_node_id"], ui["last_link_id"] = 3, 9
    assert patch_workflow(ui).vae_patches == 1
    patch = next(n for n in ui["nodes"] if n["type"] == "WanVideoNativeVAEPatch")
    new_link = ui["links"][-1]
    assert new_link == [10, 1, 1, patch["id"], 0, "WANVAE"]
    assert loader["outputs"][0]["links"] == [9] and loader["outputs"][1]["links"] == [10]
    assert [9, 1, 0, 3, 0, "STRING"] in ui["links"]


def test_an_api_decode_names_its_vae_by_an_integer_id_and_is_traced():
    """The API format's links may name a node by an integer: traced as one named by a string is, so
    beside a TAEHV decoder (whose decode is left as it is) a decode of a Wan 2.1 VAE is still converted
    (an untraced one there would be kept)."""
    api = {"1": {"class_type": "WanVideoTinyVAELoader", "inputs": {"model_name": "taew2_1.safetensors"}},
           "2": {"class_type": "WanVideoDecode", "inputs": {"vae": [1, 0]}},
           "3": {"class_type": "WanVideoVAELoader", "inputs": {"model_name": "Wan2_1_VAE_bf16.safetensors"}},
           "4": {"class_type": "WanVideoDecode", "inputs": {"vae": [3, 0]}}}
    assert patch_workflow(api, vae_patch=False) == (1, 0, 0, 0, 1, 0)
    assert api["2"]["class_type"] == "WanVideoDecode" and api["4"]["class_type"] == "WanVideoNativeDecode"


def test_a_decode_fed_by_a_cycle_of_reroutes_is_untraced_not_a_hang():
    """Reroutes linked in a loop (a hand-edited or broken workflow): the trace stops, and the decode is
    one whose VAE cannot be traced (converted, as no refused VAE is loaded)."""
    ui = _ui_chain("Reroute", "Reroute", "WanVideoDecode")
    ui["nodes"][0]["inputs"] = [{"name": "", "type": "*", "link": 3}]
    ui["nodes"][1]["outputs"][0]["links"].append(3)
    ui["links"].append([3, 2, 0, 1, 0, "*"])
    assert _patched_without_hanging(ui) == (1, 0, 0, 0, 0, 0) and ui["nodes"][2]["type"] == "WanVideoNativeDecode"


def _patched_without_hanging(wf, seconds=30):
    """patch_workflow(wf)'s report, run in a thread of its own: a trace that loops fails the test
    instead of hanging it."""
    report = []
    worker = threading.Thread(target=lambda: report.append(patch_workflow(wf)), daemon=True)
    worker.start()
    worker.join(seconds)
    assert report, f"patch_workflow did not return within {seconds} s"
    return report[0]


def test_a_loader_output_that_feeds_a_patch_node_among_others_is_left_as_it_is():
    """The workflow's author placed a patch node on that output (and left other links beside it, on
    purpose or not): no second patch node is added."""
    ui = _ui_chain("WanVideoVAELoader", "WanVideoNativeVAEPatch", "WanVideoSampler")
    ui["nodes"][0]["outputs"][0]["links"].append(3)
    ui["nodes"].append({"id": 4, "type": "WanVideoDecode", "inputs": [{"name": "vae", "type": "WANVAE", "link": 3}]})
    ui["links"].append([3, 1, 0, 4, 0, "WANVAE"])
    ui["last_node_id"], ui["last_link_id"] = 4, 3
    assert patch_workflow(ui).vae_patches == 0
    assert [n["type"] for n in ui["nodes"]].count("WanVideoNativeVAEPatch") == 1


def test_decodes_inside_legacy_group_nodes_are_converted():
    ui = {"nodes": [{"id": 7, "type": "workflow>Decode"}], "links": [],
          "extra": {"groupNodes": {"Decode": {"nodes": [{"index": 0, "type": "WanVideoDecode",
                                                          "widgets_values": [False, 272, 272, 144, 128, "default"]}],
                                              "links": [], "external": []}}}}
    untouched = copy.deepcopy(ui)
    assert patch_workflow(ui).decode_nodes == 1
    inner = ui["extra"]["groupNodes"]["Decode"]["nodes"][0]
    assert inner["type"] == "WanVideoNativeDecode" and inner["widgets_values"][1:3] == [272, 272]
    # a group's links are not traced: beside a loader of a VAE the native decode refuses, its decode is kept
    untouched["nodes"].append({"id": 8, "type": "WanVideoTinyVAELoader", "widgets_values": ["taew2_1.safetensors"]})
    assert patch_workflow(untouched)[::4] == (0, 1)
    with pytest.raises(ValueError, match="group node 'x' is not an object"):
        patch_workflow({"nodes": [], "extra": {"groupNodes": {"x": 1}}})


def test_a_saved_prompt_request_is_patched_inside():
    body = {"client_id": "abc", "prompt": {"1": {"class_type": "WanVideoVAELoader", "inputs": {}},
                                           "2": {"class_type": "WanVideoDecode", "inputs": {"vae": ["1", 0]}}}}
    assert patch_workflow(body) == (1, 1, 0, 0, 0, 0)
    assert body["client_id"] == "abc" and body["prompt"]["2"] == {"class_type": "WanVideoNativeDecode",
                                                                  "inputs": {"vae": ["3", 0]}}


def test_a_saved_prompt_requests_embedded_workflow_is_patched_too():
    """ComfyUI writes extra_data.extra_pnginfo.workflow (the same graph in the UI format) into its outputs'
    metadata: patched with the prompt, counted once."""
    body = {"prompt": {"1": {"class_type": "WanVideoVAELoader", "inputs": {}},
                       "2": {"class_type": "WanVideoDecode", "inputs": {"vae": ["1", 0]}}},
            "extra_data": {"extra_pnginfo": {"workflow": _ui_chain("WanVideoVAELoader", "WanVideoDecode")}}}
    assert patch_workflow(body) == (1, 1, 0, 0, 0, 0)
    embedded = body["extra_data"]["extra_pnginfo"]["workflow"]
    assert [n["type"] for n in embedded["nodes"]] == ["WanVideoVAELoader", "WanVideoNativeDecode", "WanVideoNativeVAEPatch"]


# ---- ComfyUI's own VAE decodes ---------------------------------------------------------------------

CORE_PROPS = {"Node name for S&R": "VAEDecode", "cnr_id": "comfy-core", "ver": "0.3.45"}


def _core_subgraph_workflow(vae_name="wan_2.1_vae.safetensors"):
    """ComfyUI's templates' shape (Wan 2.2 14B image to video): the models' loaders and the VAE Decode inside a
    subgraph whose links are objects, the loader's vae_name promoted to the subgraph's input."""
    link = lambda i, o, os_, t, ts, kind: {"id": i, "origin_id": o, "origin_slot": os_, "target_id": t,  # noqa: E731
                                           "target_slot": ts, "type": kind}
    sub = {"id": "d2ac71a3-sub", "inputs": [{"id": "in-0", "name": "vae_name", "type": "COMBO", "linkIds": [31]}],
           "outputs": [{"id": "out-0", "name": "IMAGE", "type": "IMAGE", "linkIds": [20]}],
           "nodes": [
               {"id": 106, "type": "VAELoader", "inputs": [{"name": "vae_name", "type": "COMBO",
                                                            "widget": {"name": "vae_name"}, "link": 31}],
                "outputs": [{"name": "VAE", "type": "VAE", "slot_index": 0, "links": [16, 15]}],
                "properties": {"Node name for S&R": "VAELoader", "cnr_id": "comfy-core"}, "widgets_values": [vae_name]},
               {"id": 111, "type": "KSamplerAdvanced", "inputs": [],
                "outputs": [{"name": "LATENT", "type": "LATENT", "links": [17]}], "widgets_values": []},
               {"id": 128, "type": "WanImageToVideo", "inputs": [{"name": "vae", "type": "VAE", "link": 15}],
                "outputs": [], "widgets_values": [720, 720, 81, 1]},
               {"id": 129, "type": "VAEDecode", "inputs": [{"localized_name": "samples", "name": "samples",
                                                            "type": "LATENT", "link": 17},
                                                           {"localized_name": "vae", "name": "vae", "type": "VAE",
                                                            "link": 16}],
                "outputs": [{"name": "IMAGE", "type": "IMAGE", "slot_index": 0, "links": [20]}],
                "size": [210, 50], "properties": dict(CORE_PROPS), "widgets_values": []}],
           "links": [link(15, 106, 0, 128, 0, "VAE"), link(16, 106, 0, 129, 1, "VAE"),
                     link(17, 111, 0, 129, 0, "LATENT"), link(20, 129, 0, -20, 0, "IMAGE"),
                     link(31, -10, 0, 106, 0, "COMBO")]}
    return {"last_node_id": 130, "last_link_id": 40, "version": 0.4, "definitions": {"subgraphs": [sub]},
            "nodes": [{"id": 130, "type": "d2ac71a3-sub", "inputs": [],
                       "properties": {"proxyWidgets": [["106", "vae_name"]]},
                       "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": []}], "widgets_values": []}],
            "links": []}


def _subgraph_node(wf, node_id):
    return next(n for n in wf["definitions"]["subgraphs"][0]["nodes"] if n["id"] == node_id)


def test_a_core_vae_decode_of_a_wan21_vae_becomes_the_native_one(tmp_path, capsys):
    """ComfyUI's own workflows for Wan 2.1 and Wan 2.2 14B decode with core's VAE Decode and the Wan 2.1 VAE: the
    node becomes WanCoreVAENativeDecode with the same links, untiled (core's VAE Decode is untiled; the planner
    still tiles where the memory asks), the source pack's identity dropped, grown to hold its widgets (ComfyUI
    fits only top-level nodes when loading); patching twice changes nothing."""
    wf = _core_subgraph_workflow()
    before = copy.deepcopy(wf)
    assert patch_workflow(wf) == (0, 0, 0, 0, 0, 1)
    node = _subgraph_node(wf, 129)
    assert node["type"] == "WanCoreVAENativeDecode" and node["widgets_values"] == [512, False]
    assert node["properties"] == {"Node name for S&R": "WanCoreVAENativeDecode", "cnr_id": "wanvideo-vae"}
    assert node["size"] == [315, 102]
    check_widgets(node)
    old = _subgraph_node(before, 129)
    assert node["inputs"] == old["inputs"] and node["outputs"] == old["outputs"]
    strip = lambda w: {k: v for k, v in w.items() if k != "definitions"}  # noqa: E731
    assert strip(wf) == strip(before)
    assert [n for n in wf["definitions"]["subgraphs"][0]["nodes"] if n["id"] != 129] == \
        [n for n in before["definitions"]["subgraphs"][0]["nodes"] if n["id"] != 129]
    assert wf["definitions"]["subgraphs"][0]["links"] == before["definitions"]["subgraphs"][0]["links"]
    again = copy.deepcopy(wf)
    assert patch_workflow(again) == (0, 0, 0, 0, 0, 0) and again == wf
    src = tmp_path / "core.json"
    src.write_text(json.dumps(before))
    assert cli_main(["patch-workflow", str(src), str(tmp_path / "o.json")]) == 0
    said = capsys.readouterr().out
    assert "1 VAE Decode node(s) of a Wan 2.1 VAE (ComfyUI's own) now use WanCoreVAENativeDecode" in said
    assert "WanVideoDecode" not in said
    assert load(tmp_path / "o.json") == wf
    assert cli_main(["patch-workflow", "--no-core", str(src), str(tmp_path / "o.json")]) == 0
    assert load(tmp_path / "o.json") == before


@pytest.mark.parametrize("name,converted", [
    ("wan_2.1_vae.safetensors", True), ("Wan2_1_VAE_bf16.safetensors", True), ("vae\\Wan2.1_VAE.pth", True),
    ("Wan2_1_VAE_2022.safetensors", True), ("wan_vae.safetensors", True),
    ("wan2.2_vae.safetensors", False), ("Wan22_VAE_fp32.safetensors", False),  # the 5B model's: another decoder
    ("wan_vae_2.2.safetensors", False), ("Wan-VAE-2.2.safetensors", False),
    ("Wan2.1_VAE_upscale2x_imageonly_real_v1.safetensors", False),  # 12 output channels
    ("qwen_image_vae.safetensors", False), ("sdxl_vae.safetensors", False), ("ae.safetensors", False)])
def test_a_core_decode_is_converted_only_for_a_wan21_vae_file(name, converted):
    wf = _core_subgraph_workflow(name)
    assert patch_workflow(wf).core_decode_nodes == converted
    assert _subgraph_node(wf, 129)["type"] == ("WanCoreVAENativeDecode" if converted else "VAEDecode")


def test_a_tiled_core_decode_keeps_its_tile_size_and_drops_its_other_inputs():
    """VAE Decode (Tiled): tiled at the same tile size (the same pixels and range as ours); its overlap and
    temporal inputs, here converted to sockets and fed by primitives, leave with their links, and the tile
    size's link follows its input to its new slot. ComfyUI-MultiGPU's loader counts as a loader."""
    widget = lambda name, link: {"name": name, "type": "INT", "widget": {"name": name}, "link": link}  # noqa: E731
    ui = {"last_node_id": 5, "last_link_id": 4, "nodes": [
        {"id": 1, "type": "VAELoaderMultiGPU", "outputs": [{"name": "VAE", "type": "VAE", "links": [1]}],
         "widgets_values": ["Wan2_1_VAE_bf16.safetensors", "cuda:1"]},
        {"id": 2, "type": "KSampler", "outputs": [{"name": "LATENT", "type": "LATENT", "links": [2]}]},
        {"id": 3, "type": "PrimitiveNode", "outputs": [{"name": "INT", "type": "INT", "links": [3]}],
         "widgets_values": [32]},
        {"id": 4, "type": "PrimitiveNode", "outputs": [{"name": "INT", "type": "INT", "links": [4]}],
         "widgets_values": [384]},
        {"id": 5, "type": "VAEDecodeTiled", "inputs": [
            {"name": "samples", "type": "LATENT", "link": 2}, {"name": "vae", "type": "VAE", "link": 1},
            widget("overlap", 3), widget("tile_size", 4), widget("temporal_size", None), widget("temporal_overlap", None)],
         "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": []}],
         "properties": {"Node name for S&R": "VAEDecodeTiled"}, "widgets_values": [384, 32, 64, 8]}],
        "links": [[1, 1, 0, 5, 1, "VAE"], [2, 2, 0, 5, 0, "LATENT"], [3, 3, 0, 5, 2, "INT"], [4, 4, 0, 5, 3, "INT"]]}
    check_links(ui)
    with_junk = copy.deepcopy(ui)
    with_junk["links"].append(None)  # an entry that is no link (a hand-edited file): skipped, as elsewhere
    assert patch_workflow(with_junk).core_decode_nodes == 1 and with_junk["links"][-1] is None
    assert patch_workflow(ui) == (0, 0, 0, 0, 0, 1)
    node = ui["nodes"][4]
    assert node["type"] == "WanCoreVAENativeDecode" and node["widgets_values"] == [384, True]
    assert [i["name"] for i in node["inputs"]] == ["samples", "vae", "tile_size"]
    assert ui["links"] == [[1, 1, 0, 5, 1, "VAE"], [2, 2, 0, 5, 0, "LATENT"], [4, 4, 0, 5, 2, "INT"]]
    assert ui["nodes"][2]["outputs"][0]["links"] == []
    check_links(ui)
    check_widgets(node)


def test_a_core_decode_whose_vae_cannot_be_traced():
    """Its VAE from a subgraph's input or a link-less broadcast: converted where every VAE the workflow makes is
    a Wan 2.1 one from a core loader, kept beside any other (a checkpoint's, a Wan 2.2 VAE)."""
    def workflow(*makers):
        nodes = [{"id": 1, "type": "VAEDecode", "inputs": [{"name": "samples", "type": "LATENT", "link": None},
                                                           {"name": "vae", "type": "VAE", "link": None}],
                  "outputs": [], "widgets_values": []}]
        for i, (kind, values) in enumerate(makers, start=2):
            nodes.append({"id": i, "type": kind, "widgets_values": values,
                          "outputs": [{"name": "VAE", "type": "VAE", "links": []}]})
        return {"nodes": nodes, "links": []}

    wan21 = ("VAELoader", ["wan_2.1_vae.safetensors"])
    assert patch_workflow(workflow(wan21)).core_decode_nodes == 1
    assert patch_workflow(workflow(wan21, ("Reroute", []))).core_decode_nodes == 1  # hands one on
    assert patch_workflow(workflow()).core_decode_nodes == 0
    assert patch_workflow(workflow(wan21, ("VAELoader", ["wan2.2_vae.safetensors"]))).core_decode_nodes == 0
    assert patch_workflow(workflow(wan21, ("CheckpointLoaderSimple", ["sd_xl_base_1.0.safetensors"]))) \
        .core_decode_nodes == 0


def test_core_decodes_in_the_api_format():
    api = {"1": {"class_type": "VAELoader", "inputs": {"vae_name": "wan_2.1_vae.safetensors"}},
           "2": {"class_type": "VAEDecode", "inputs": {"samples": ["9", 0], "vae": ["1", 0]}},
           "3": {"class_type": "VAEDecodeTiled", "inputs": {"samples": ["9", 0], "vae": ["1", 0], "tile_size": 384,
                                                            "overlap": 64, "temporal_size": 64, "temporal_overlap": 8}},
           "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd_xl_base_1.0.safetensors"}},
           "5": {"class_type": "VAEDecode", "inputs": {"samples": ["9", 0], "vae": ["4", 2]}},
           "6": {"class_type": "VAEDecode", "inputs": {"samples": ["9", 0], "vae": ["7", 0]}},
           "7": {"class_type": "VAELoader", "inputs": {"vae_name": "wan2.2_vae.safetensors"}}}
    untouched = copy.deepcopy(api)
    assert patch_workflow(untouched, core=False) == (0, 0, 0, 0, 0, 0) and untouched == api
    patched = copy.deepcopy(api)
    assert patch_workflow(patched) == (0, 0, 0, 0, 0, 2)
    assert patched["2"] == {"class_type": "WanCoreVAENativeDecode", "inputs": {
        "samples": ["9", 0], "vae": ["1", 0], "tile_size": 512, "enable_tiling": False}}
    assert patched["3"] == {"class_type": "WanCoreVAENativeDecode", "inputs": {
        "samples": ["9", 0], "vae": ["1", 0], "tile_size": 384, "enable_tiling": True}}
    spec = NODE_CLASS_MAPPINGS["WanCoreVAENativeDecode"].INPUT_TYPES()
    assert set(patched["2"]["inputs"]) == set(spec["required"]) and "optional" not in spec
    assert {k: v for k, v in patched.items() if k not in ("2", "3")} == {k: v for k, v in api.items() if k not in ("2", "3")}


def test_a_vae_on_a_gpu_of_its_own_is_traced_through_select_vae_device():
    """Core's Select VAE Device hands on the VAE it gets (placed on another GPU): a decode behind it is
    judged by the loader before it, in either format."""
    for name, converted in (("wan_2.1_vae.safetensors", True), ("wan2.2_vae.safetensors", False)):
        ui = _ui_chain("VAELoader", "SelectVAEDevice", "VAEDecode", widgets={1: [name], 2: ["gpu:1"]})
        assert patch_workflow(ui).core_decode_nodes == converted
        assert ui["nodes"][2]["type"] == ("WanCoreVAENativeDecode" if converted else "VAEDecode")
        api = {"1": {"class_type": "VAELoader", "inputs": {"vae_name": name}},
               "2": {"class_type": "SelectVAEDevice", "inputs": {"vae": ["1", 0], "device": "gpu:1"}},
               "3": {"class_type": "VAEDecode", "inputs": {"samples": ["9", 0], "vae": ["2", 0]}}}
        assert patch_workflow(api).core_decode_nodes == converted and api["3"]["inputs"]["vae"] == ["2", 0]
    loop = {"1": {"class_type": "SelectVAEDevice", "inputs": {"vae": ["2", 0]}},  # hand-edited links: no loader
            "2": {"class_type": "SelectVAEDevice", "inputs": {"vae": ["1", 0]}},
            "3": {"class_type": "VAEDecode", "inputs": {"samples": ["9", 0], "vae": ["2", 0]}}}
    assert _patched_without_hanging(loop).core_decode_nodes == 0


def _across_subgraphs(inner_decode, vae_names, other="sdxl_vae.safetensors"):
    """A subgraph 'S' whose decode (type inner_decode) takes its VAE from the subgraph's input, one instance
    of it per name in vae_names, each fed by its own loader in the top-level graph; a subgraph 'L' whose
    Wan 2.1 loader feeds its output, read by a VAE Decode outside; and, beside them, a VAE Decode of another
    VAE (`other`), which makes the 'every VAE is a Wan 2.1 one' rule for untraced decodes false."""
    wrapper = inner_decode == "WanVideoDecode"
    loader, kind = ("WanVideoVAELoader", "WANVAE") if wrapper else ("VAELoader", "VAE")
    sub_s = {"id": "S", "inputs": [{"name": "vae", "type": kind, "linkIds": [11]}], "outputs": [],
             "nodes": [{"id": 20, "type": inner_decode, "outputs": [],
                        "inputs": [{"name": "samples", "type": "LATENT", "link": None},
                                   {"name": "vae", "type": kind, "link": 11}], "widgets_values": []}],
             "links": [{"id": 11, "origin_id": -10, "origin_slot": 0, "target_id": 20, "target_slot": 1, "type": kind}]}
    sub_l = {"id": "L", "inputs": [], "outputs": [{"name": "VAE", "type": "VAE", "linkIds": [12]}],
             "nodes": [{"id": 30, "type": "VAELoader", "widgets_values": ["wan_2.1_vae.safetensors"],
                        "outputs": [{"name": "VAE", "type": "VAE", "links": [12]}]}],
             "links": [{"id": 12, "origin_id": 30, "origin_slot": 0, "target_id": -20, "target_slot": 0, "type": "VAE"}]}
    nodes, links = [], []
    for i, name in enumerate(vae_names):
        loader_id, instance_id, link_id = 100 + 2 * i, 101 + 2 * i, 50 + i
        nodes.append({"id": loader_id, "type": loader, "widgets_values": [name],
                      "outputs": [{"name": "vae", "type": kind, "links": [link_id]}]})
        nodes.append({"id": instance_id, "type": "S", "inputs": [{"name": "vae", "type": kind, "link": link_id}],
                      "outputs": []})
        links.append([link_id, loader_id, 0, instance_id, 0, kind])
    nodes += [{"id": 7, "type": "L", "outputs": [{"name": "VAE", "type": "VAE", "links": [4]}]},
              {"id": 8, "type": "VAEDecode", "inputs": [{"name": "samples", "type": "LATENT", "link": None},
                                                        {"name": "vae", "type": "VAE", "link": 4}], "outputs": []},
              {"id": 5, "type": "VAELoader", "widgets_values": [other], "outputs": [{"name": "VAE", "type": "VAE",
                                                                                    "links": [3]}]},
              {"id": 6, "type": "VAEDecode", "inputs": [{"name": "samples", "type": "LATENT", "link": None},
                                                        {"name": "vae", "type": "VAE", "link": 3}], "outputs": []}]
    links += [[4, 7, 0, 8, 1, "VAE"], [3, 5, 0, 6, 1, "VAE"]]
    return {"nodes": nodes, "links": links, "last_node_id": 120, "last_link_id": 60,
            "definitions": {"subgraphs": [sub_s, sub_l]}}


def _types(wf):
    return {n["id"]: n["type"] for g in [wf] + wf["definitions"]["subgraphs"] for n in g["nodes"]}


def test_a_core_decode_is_traced_across_subgraph_boundaries():
    """Into a subgraph's input (what feeds it in every instance) and out of an instance's output (what feeds it
    inside): a decode whose every way leads to a Wan 2.1 loader is converted, beside a decode of another VAE
    that is not (the fallback for untraced decodes would have kept both)."""
    wf = _across_subgraphs("VAEDecode", ["wan_2.1_vae.safetensors", "Wan2_1_VAE_bf16.safetensors"])
    assert patch_workflow(wf).core_decode_nodes == 2
    assert _types(wf)[20] == _types(wf)[8] == "WanCoreVAENativeDecode" and _types(wf)[6] == "VAEDecode"
    mixed = _across_subgraphs("VAEDecode", ["wan_2.1_vae.safetensors", "ae.safetensors"])
    assert patch_workflow(mixed).core_decode_nodes == 1 and _types(mixed)[20] == "VAEDecode"  # one instance: not Wan
    orphan = _across_subgraphs("VAEDecode", [])  # a definition no instance uses: untraced, and another VAE is made
    assert patch_workflow(orphan).core_decode_nodes == 1 and _types(orphan)[20] == "VAEDecode"


def test_a_wrapper_decode_is_traced_across_subgraph_boundaries():
    """The same tracing for WanVideoDecode: kept where an instance is fed by a TAEHV decoder, converted where
    every instance is fed a Wan 2.1 VAE although the workflow loads a TAEHV decoder elsewhere."""
    refused = _across_subgraphs("WanVideoDecode", ["Wan2_1_VAE_bf16.safetensors"])
    refused["nodes"][0]["type"] = "WanVideoTinyVAELoader"
    assert patch_workflow(refused, vae_patch=False).decodes_kept == 1 and _types(refused)[20] == "WanVideoDecode"
    fine = _across_subgraphs("WanVideoDecode", ["Wan2_1_VAE_bf16.safetensors"])
    fine["nodes"].append({"id": 9, "type": "WanVideoTinyVAELoader", "widgets_values": ["taew2_1.safetensors"],
                          "outputs": []})
    assert patch_workflow(fine, vae_patch=False)[:1] == (1,) and _types(fine)[20] == "WanVideoNativeDecode"


@pytest.mark.parametrize("decode", ["VAEDecode", "WanVideoDecode"])
def test_two_ways_that_meet_are_no_loop(decode):
    """Two instances of a subgraph fed by one Reroute: the second way back reaches the link the first took.
    That was taken for a loop (untraced), so the decode inside was kept beside another VAE."""
    wf = _across_subgraphs(decode, ["wan_2.1_vae.safetensors"] * 2)
    kind = wf["links"][0][5]
    reroute = {"id": 110, "type": "Reroute", "inputs": [{"name": "", "type": kind, "link": 59}],
               "outputs": [{"name": "", "type": kind, "links": [50, 51]}]}
    wf["nodes"] = [n for n in wf["nodes"] if n["id"] != 102] + [reroute]
    wf["nodes"][0]["outputs"][0]["links"] = [59]
    wf["links"] = [[59, 100, 0, 110, 0, kind]] + [[lk[0], 110, 0, lk[3], lk[4], kind] if lk[0] in (50, 51) else lk
                                                  for lk in wf["links"]]
    if decode == "WanVideoDecode":  # what keeps an untraced decode: a TAEHV decoder loaded elsewhere
        wf["nodes"].append({"id": 9, "type": "WanVideoTinyVAELoader", "widgets_values": ["taew2_1.safetensors"],
                            "outputs": []})
    check_links(wf)
    report = patch_workflow(wf, vae_patch=False)
    assert _types(wf)[20] == ("WanCoreVAENativeDecode" if decode == "VAEDecode" else "WanVideoNativeDecode")
    assert report.decodes_kept == 0


@pytest.mark.parametrize("loader,decode,other", [("VAELoader", "VAEDecode", "sdxl_vae.safetensors"),
                                                 ("WanVideoVAELoader", "WanVideoDecode", None)])
def test_a_way_through_a_subgraph_goes_back_out_where_it_came_in(loader, decode, other):
    """A subgraph whose input goes straight to its output, used twice: each decode after an instance takes
    what feeds that instance, not what feeds the other (a Wan 2.1 VAE and another one)."""
    kind = "VAE" if loader == "VAELoader" else "WANVAE"
    sub = {"id": "P", "inputs": [{"name": "vae", "type": kind, "linkIds": [9]}], "nodes": [],
           "outputs": [{"name": "vae", "type": kind, "linkIds": [9]}],
           "links": [{"id": 9, "origin_id": -10, "origin_slot": 0, "target_id": -20, "target_slot": 0, "type": kind}]}
    second = {"id": 2, "type": loader, "widgets_values": [other], "outputs": [{"name": "vae", "type": kind,
                                                                               "links": [2]}]}
    if other is None:
        second.update(type="WanVideoTinyVAELoader", widgets_values=["taew2_1.safetensors"])
    nodes = [{"id": 1, "type": loader, "widgets_values": ["wan_2.1_vae.safetensors"],
              "outputs": [{"name": "vae", "type": kind, "links": [1]}]}, second]
    for i in (3, 4):
        nodes.append({"id": i, "type": "P", "inputs": [{"name": "vae", "type": kind, "link": i - 2}],
                      "outputs": [{"name": "vae", "type": kind, "links": [i]}]})
        nodes.append({"id": i + 2, "type": decode, "outputs": [], "widgets_values": [],
                      "inputs": [{"name": "samples", "type": "LATENT", "link": None},
                                 {"name": "vae", "type": kind, "link": i}]})
    links = [[1, 1, 0, 3, 0, kind], [2, 2, 0, 4, 0, kind], [3, 3, 0, 5, 1, kind], [4, 4, 0, 6, 1, kind]]
    wf = {"nodes": nodes, "links": links, "last_node_id": 6, "last_link_id": 4, "definitions": {"subgraphs": [sub]}}
    check_links(wf)
    report = patch_workflow(wf, vae_patch=False)
    assert _types(wf)[6] == decode and _types(wf)[5] != decode
    assert report.decodes_kept == (0 if decode == "VAEDecode" else 1)


def test_an_unknown_node_between_loader_and_decode_is_an_untraced_way():
    """rgthree's Reroute hands its input on (traced through); a node the patcher does not know (a switch) is no
    loader: the decode behind it counts as untraced, kept where the workflow loads a VAE the native decode
    refuses (a Wan 2.2 one), converted where it does not."""
    ui = _ui_chain("WanVideoVAELoader", "Reroute (rgthree)", "WanVideoDecode", widgets={1: ["Wan2_2_VAE_bf16.safetensors"]})
    assert patch_workflow(ui)[4] == 1 and ui["nodes"][2]["type"] == "WanVideoDecode"
    for name, converted in (("Wan2_2_VAE_bf16.safetensors", False), ("Wan2_1_VAE_bf16.safetensors", True)):
        ui = _ui_chain("WanVideoVAELoader", "Any Switch (rgthree)", "WanVideoDecode", widgets={1: [name]})
        assert patch_workflow(ui, vae_patch=False).decode_nodes == converted
    api = {"1": {"class_type": "WanVideoVAELoader", "inputs": {"model_name": "Wan2_2_VAE_bf16.safetensors"}},
           "2": {"class_type": "Any Switch (rgthree)", "inputs": {"any_01": ["1", 0]}},
           "3": {"class_type": "WanVideoDecode", "inputs": {"vae": ["2", 0]}}}
    assert patch_workflow(api).decodes_kept == 1 and api["3"]["class_type"] == "WanVideoDecode"


def _promoted_on_the_instance(wf, *names):
    """Older subgraphs keep a promoted widget's value on the instance: one instance per name, each holding it
    for the subgraph's vae_name input (which the inner loader's vae_name widget is fed from)."""
    template = wf["nodes"][0]
    wf["nodes"] = [dict(template, id=130 + i, widgets_values=[name],
                        inputs=[{"name": "vae_name", "type": "COMBO", "widget": {"name": "vae_name"}, "link": None}])
                   for i, name in enumerate(names)]
    return wf


def test_a_loader_name_promoted_to_the_subgraph_instance_is_read_there():
    """The value an instance holds for a promoted widget is the one its loader runs with (the inner node's
    saved one may be stale): a core decode is converted only if every instance's names a Wan 2.1 VAE, and so
    is an untraced one beside them."""
    unlinked = {"id": 140, "type": "VAEDecode", "inputs": [{"name": "vae", "type": "VAE", "link": None}]}
    for names, converted in ((["wan2.2_vae.safetensors"], 0), (["Wan2_1_VAE_bf16.safetensors"], 2),
                             (["Wan2_1_VAE_bf16.safetensors", "wan2.2_vae.safetensors"], 0)):
        wf = _promoted_on_the_instance(_core_subgraph_workflow("wan_2.1_vae.safetensors"), *names)
        wf["nodes"].append(dict(unlinked))
        assert patch_workflow(wf).core_decode_nodes == converted, names


def test_a_wrapper_loader_whose_promoted_name_says_wan22_is_not_patched():
    """A WanVideo VAE loader inside a subgraph whose instance loads a Wan 2.2 VAE: no patch node (it would
    refuse that VAE for every instance), counted as a Wan 2.2 loader, its decode kept."""
    wf = _core_subgraph_workflow("Wan2_1_VAE_bf16.safetensors")
    sub = wf["definitions"]["subgraphs"][0]
    loader, decode = _subgraph_node(wf, 106), _subgraph_node(wf, 129)
    loader["type"], decode["type"] = "WanVideoVAELoader", "WanVideoDecode"
    loader["outputs"][0].update(name="vae", type="WANVAE")
    decode["inputs"][1]["type"] = "WANVAE"
    sub["nodes"] = [n for n in sub["nodes"] if n["id"] != 128]
    sub["links"] = [lk for lk in sub["links"] if lk["id"] != 15]
    loader["outputs"][0]["links"] = [16]
    _promoted_on_the_instance(wf, "Wan2_2_VAE_bf16.safetensors")
    unlinked = {"id": 140, "type": "WanVideoDecode", "inputs": [{"name": "vae", "type": "WANVAE", "link": None}]}
    wf["nodes"].append(dict(unlinked))  # untraced, beside a loader of a refused VAE (by its instance): kept too
    assert patch_workflow(wf) == (0, 0, 0, 1, 2, 0)
    _promoted_on_the_instance(wf, "Wan2_1_VAE_bf16.safetensors")
    wf["nodes"].append(dict(unlinked))
    assert patch_workflow(wf) == (2, 1, 0, 0, 0, 0)


# ---- workflows at the edges of what ComfyUI writes -----------------------------------------------

def promoted_subgraph(kind, widgets, instances, value):
    """A subgraph holding one node of `kind` whose `widgets` widgets are all promoted to the subgraph's
    inputs, placed `instances` times, instance j holding value(j, i) for widget i."""
    names = [f"w{i}" for i in range(widgets)]
    inner = {"id": 1, "type": kind, "outputs": [], "widgets_values": [""] * widgets,
             "inputs": [{"name": n, "type": "STRING", "widget": {"name": n}, "link": i + 1} for i, n in enumerate(names)]}
    sub = {"id": "S", "nodes": [inner], "outputs": [],
           "links": [{"id": i + 1, "origin_id": -10, "origin_slot": i, "target_id": 1, "target_slot": i, "type": "STRING"}
                     for i in range(widgets)],
           "inputs": [{"name": n, "type": "STRING", "linkIds": [i + 1]} for i, n in enumerate(names)]}
    nodes = [{"id": 10 + j, "type": "S", "outputs": [], "widgets_values": [value(j, i) for i in range(widgets)],
              "inputs": [{"name": n, "type": "STRING", "widget": {"name": n}, "link": None} for n in names]}
             for j in range(instances)]
    return {"last_node_id": 100, "last_link_id": 100, "nodes": nodes, "links": [], "definitions": {"subgraphs": [sub]}}


def test_promoted_widgets_of_many_instances_are_read_only_on_loaders(monkeypatch):
    """The values a subgraph's instances give its promoted widgets are combined for the loaders alone
    (whose file names the patcher reads), each distinct value once: a sampler with 8 promoted widgets in
    10 instances was 10**8 combinations (minutes, GiBs); past MAX_VALUE_SETS a workflow is refused."""
    from wanvideo_vae import workflow
    monkeypatch.setattr(workflow, "MAX_VALUE_SETS", 16)
    assert patch_workflow(promoted_subgraph("KSampler", 8, 10, lambda j, i: 10 * j + i)) == (0, 0, 0, 0, 0, 0)
    same = promoted_subgraph("VAELoader", 8, 10, lambda j, i: "wan_2.1_vae.safetensors")
    assert patch_workflow(same) == (0, 0, 0, 0, 0, 0)
    with pytest.raises(ValueError, match="over 16 combinations of values"):
        patch_workflow(promoted_subgraph("VAELoader", 3, 5, lambda j, i: f"vae_{j}.safetensors"))


def test_subgraphs_nested_past_pythons_recursion_are_refused_in_a_line(tmp_path, capsys):
    depth = 1500
    subs = [{"id": f"S{k}", "inputs": [], "outputs": [{"name": "vae", "type": "VAE", "linkIds": [1]}],
             "nodes": [{"id": 1, "type": f"S{k + 1}" if k + 1 < depth else "VAELoader", "inputs": [],
                        "outputs": [{"name": "vae", "type": "VAE", "links": [1]}],
                        "widgets_values": ["wan_2.1_vae.safetensors"]}],
             "links": [{"id": 1, "origin_id": 1, "origin_slot": 0, "target_id": -20, "target_slot": 0, "type": "VAE"}]}
            for k in range(depth)]
    wf = {"last_node_id": 3, "last_link_id": 1, "links": [[1, 2, 0, 3, 1, "VAE"]], "definitions": {"subgraphs": subs},
          "nodes": [{"id": 2, "type": "S0", "inputs": [], "outputs": [{"name": "vae", "type": "VAE", "links": [1]}]},
                    {"id": 3, "type": "VAEDecode", "inputs": [{"name": "vae", "type": "VAE", "link": 1}], "outputs": []}]}
    (tmp_path / "deep.json").write_text(json.dumps(wf))
    assert cli_main(["patch-workflow", str(tmp_path / "deep.json"), str(tmp_path / "o.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert "subgraphs nested too deeply to follow" in err and "\n" not in err and not (tmp_path / "o.json").exists()


def patch_node_ids(wf):
    return [n["id"] for n in wf["nodes"] if n["type"] == "WanVideoNativeVAEPatch"]


def loader_and_sampler(loader_id=1, sampler_id=2, link=None):
    link = link or [1, loader_id, 0, sampler_id, 0, "WANVAE"]
    return {"nodes": [{"id": loader_id, "type": "WanVideoVAELoader", "widgets_values": ["Wan2_1_VAE_bf16.safetensors"],
                       "outputs": [{"name": "vae", "type": "WANVAE", "links": [link[0]]}]},
                      {"id": sampler_id, "type": "WanVideoSampler", "outputs": [],
                       "inputs": [{"name": "vae", "type": "WANVAE", "link": link[0]}]}],
            "links": [link], "last_node_id": 1, "last_link_id": 1}


@pytest.mark.parametrize("wf,node_id,link_id", [
    (loader_and_sampler(sampler_id=2.0), 3, 2),                      # 2.0 is node 2 to the frontend
    (loader_and_sampler("1", "2"), 3, 2),                            # ids as strings of digits
    (loader_and_sampler(link=[1.0, 1, 0, 2, 0, "WANVAE"]), 3, 2),
])
def test_new_ids_pass_every_id_a_number_or_digits_give(wf, node_id, link_id):
    assert patch_workflow(wf).vae_patches == 1
    assert patch_node_ids(wf) == [node_id] and wf["last_link_id"] == link_id


def test_new_ids_pass_the_ids_of_short_links_too():
    wf = loader_and_sampler()
    wf["links"].append([102, 7, 0, 8, 0])  # not a link the patcher reads, but its id is taken
    patch_workflow(wf)
    assert wf["last_link_id"] == 103


def test_a_loader_hands_on_only_the_links_that_leave_it():
    """A loader output listing a link that starts elsewhere (a stale entry) keeps it where it starts:
    patching moves the loader's own links alone, and patching again changes nothing."""
    wf = {"nodes": [{"id": 1, "type": "WanVideoVAELoader", "widgets_values": ["Wan2_1_VAE_bf16.safetensors"],
                     "outputs": [{"name": "vae", "type": "WANVAE", "links": [1]}]},
                    {"id": 2, "type": "WanVideoDecode", "inputs": [{"name": "vae", "type": "WANVAE", "link": 1}],
                     "outputs": []},
                    {"id": 3, "type": "WanVideoTinyVAELoader", "outputs": [{"name": "vae", "type": "WANVAE", "links": []}]}],
          "links": [[1, 9, 0, 2, 0, "WANVAE"]], "last_node_id": 3, "last_link_id": 1}
    patch_workflow(wf)
    assert wf["links"][0] == [1, 9, 0, 2, 0, "WANVAE"] and not patch_node_ids(wf)
    again = copy.deepcopy(wf)
    patch_workflow(again)
    assert again == wf


def test_an_api_prompt_with_other_keys_patches_again_to_itself():
    wf = {"1": {"class_type": "WanVideoVAELoader", "inputs": {}}, "2": {"class_type": "WanVideoDecode",
                                                                      "inputs": {"vae": ["1", 0]}}, "note": "x"}
    assert patch_workflow(wf).decode_nodes == 1
    again = copy.deepcopy(wf)
    assert patch_workflow(again) == (0, 0, 0, 0, 0, 0) and again == wf
    with pytest.raises(ValueError, match="no node of the API format"):
        patch_workflow({"note": "x"})
    wf = {"\u00b2": {"class_type": "WanVideoVAELoader", "inputs": {}},
          "2": {"class_type": "WanVideoSampler", "inputs": {"vae": ["\u00b2", 0]}}}
    assert patch_workflow(wf).vae_patches == 1 and "3" in wf  # a superscript is a digit to str.isdigit, not to int


@pytest.mark.parametrize("text,says", [
    ('{"nodes": [], "last_node_id": 1e400}', "'last_node_id' is not a number"),
    ('{"nodes": [{"id": 1e400, "type": "X"}]}', "a number too large for a float"),
    ('{"nodes": {}}', "'nodes' is not a list of objects"),
    ('{"nodes": false}', "'nodes' is not a list of objects"),
    ('{"nodes": [], "last_node_id": 1' + "0" * 5000 + "}", "not JSON this tool can read"),
    ('[1, 2]', "a ComfyUI workflow is a JSON object"),
])
def test_json_it_cannot_read_or_write_back_is_refused_in_a_line(tmp_path, capsys, text, says):
    """Each refusal in one line, naming the file."""
    (tmp_path / "w.json").write_text(text)
    assert cli_main(["patch-workflow", str(tmp_path / "w.json"), str(tmp_path / "o.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert says in err and "\n" not in err and not (tmp_path / "o.json").exists()
    assert f"{tmp_path / 'w.json'}: " in err
