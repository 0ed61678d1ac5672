"""Rewriting ComfyUI workflows to use the native decoder:

- every WanVideoDecode node becomes a WanVideoNativeDecode node with the same links and widget
  values (both take the same inputs in the same order), unless its VAE, traced back through
  Reroutes, SetNode / GetNode pairs and subgraph boundaries, can be one the native decoder refuses
  (a Wan 2.2 VAE, a TAEHV tiny decoder: the wrapper's tiny VAE and FlashVSR's decoder); decodes
  inside legacy group nodes too; one whose VAE cannot be traced to a loader is converted unless the
  workflow loads such a VAE anywhere;
- every Wan VAE loader's output goes through a new WanVideoNativeVAEPatch node, so the decodes
  that samplers make themselves (InfiniteTalk / MultiTalk windows, WanAnimate loops) are native
  too. An output that already feeds a patch node is left as it is, and so is a loader of a Wan 2.2
  VAE (by its file name: the patch node refuses that VAE); loaders inside subgraph definitions are
  patched there (every instance of the subgraph), those inside legacy group nodes counted, not patched;
- every ComfyUI core VAE Decode (VAEDecode) and VAE Decode (Tiled) node whose VAE comes from a core
  VAE loader of a Wan 2.1 VAE (by its file's name: wan_2.1_vae.safetensors, Wan2_1_VAE_bf16; the VAE
  of Wan 2.1 and of Wan 2.2's 14B models) becomes a WanCoreVAENativeDecode node with the same
  samples and vae links: untiled for VAE Decode (the planner tiles only where memory asks), tiled
  at the same tile size for VAE Decode (Tiled), whose overlap and temporal inputs an exact decode
  has no use for. One whose VAE cannot be traced is converted where every VAE the workflow loads is
  a Wan 2.1 one.

Handles the UI format (nodes / links, as lists or, in schema version 1, as objects; subgraph
definitions included) and the API format ({id: {"class_type", "inputs"}}, also inside a saved
/prompt request body)."""
import json
import math
import re
from collections import namedtuple

from .atomic import check_target, write_atomically

SOURCE_TYPE = "WanVideoDecode"
TARGET_TYPE = "WanVideoNativeDecode"
PATCH_TYPE = "WanVideoNativeVAEPatch"
LOADER_PREFIX = "WanVideoVAELoader"  # the wrapper's loader, and its MultiGPU variant (WanVideoVAELoaderMultiGPU)
TAEHV_LOADERS = ("WanVideoTinyVAELoader", "WanVideoFlashVSRDecoderLoader")  # WANVAEs the native decoder refuses
CORE_SOURCE_TYPES = ("VAEDecode", "VAEDecodeTiled")
CORE_TARGET_TYPE = "WanCoreVAENativeDecode"
CORE_LOADER_PREFIX = "VAELoader"  # core's loader, and ComfyUI-MultiGPU's (VAELoaderMultiGPU, its DisTorch ones)
MAX_VALUE_SETS = 4096  # a loader's widget values over its subgraph's instances: a workflow past it is refused
CORE_INPUTS = ("samples", "vae", "tile_size")  # WanCoreVAENativeDecode's inputs that a core decode's may link
CORE_TILE_SIZE = 512  # WanCoreVAENativeDecode's default (and VAE Decode (Tiled)'s)
CORE_NODE_SIZE = (315, 102)  # what two sockets and two widgets take in ComfyUI's frontend
# nodes that hand on what their first input gets (GetNode: its SetNode's); the patch node hands on the VAE,
# core's Select VAE Device the same VAE on a GPU of the user's choice
PASS_ON = ("Reroute", "Reroute (rgthree)", "SetNode", PATCH_TYPE, "SelectVAEDevice")
PACK_ID = "wanvideo-vae"

# What patch_workflow changed (and left). A namedtuple: PatchReport(0, 0, 0, 0, 0, 0) is true, compare its fields.
PatchReport = namedtuple("PatchReport", "decode_nodes vae_patches loaders_in_group_nodes wan22_loaders decodes_kept "
                                       "core_decode_nodes")
WAN22 = re.compile(r"wan[-_. ]?2[-_.]?2(?![0-9])", re.IGNORECASE)  # Wan2_2, wan2.2, Wan22, wan_2.2; not wan2.1_v22
VERSION_21 = re.compile(r"(?<![0-9])2[-_.]?1(?![0-9])")  # 2.1 anywhere in a name (2021 is not)
VERSION_22 = re.compile(r"(?<![0-9])2[-_.]?2(?![0-9])")


def _convert_ui_node(node, target=TARGET_TYPE):
    node["type"] = target
    props = node["properties"] = node.get("properties") or {}
    props["Node name for S&R"] = target
    # the source pack's identity (registry id, or GitHub repo for unregistered packs) and version:
    # ComfyUI's manager would offer to install WanVideoWrapper (or look in comfy-core) for a node it does not have
    props.pop("ver", None)
    props.pop("aux_id", None)
    if "cnr_id" in props:
        props["cnr_id"] = PACK_ID


def _ui_graphs(workflow):
    """The top-level graph and each subgraph definition: each has its own nodes and links."""
    yield workflow
    yield from (workflow.get("definitions") or {}).get("subgraphs") or []


def _group_node_lists(workflow):
    """The nodes of legacy group nodes' definitions (extra.groupNodes)."""
    groups = (workflow.get("extra") or {}).get("groupNodes") or {}
    for group in groups.values():
        yield group.get("nodes") or []


def _is_loader(node_type):
    return isinstance(node_type, str) and node_type.startswith(LOADER_PREFIX)


def _loads_wan22(values):
    """Whether a loader's widget values name a Wan 2.2 VAE file (the 5B model's, 16x)."""
    names = values.values() if isinstance(values, dict) else values if isinstance(values, list) else []
    return any(isinstance(v, str) and _names_wan22_vae(v) for v in names)


def _says_wan22(name):
    """wan2.2 in a name, or a 2.2 without a 2.1 (wan_vae_2.2)."""
    return WAN22.search(name) is not None or (VERSION_22.search(name) is not None and VERSION_21.search(name) is None)


def _names_wan22_vae(path):
    """Whether a file's name (its folders aside) names a Wan 2.2 VAE: Wan2_2_VAE_bf16, wan2.2_vae, Wan22_VAE_fp32,
    vae_wan2.2, wan_vae_2.2 (a wrapper loader's file is a Wan VAE of one version or the other)."""
    name = re.split(r"[/\\]", path)[-1]
    return "vae" in name.lower() and _says_wan22(name)


def _names_wan21_vae(path):
    """Whether a file's name (its folders aside) names a Wan 2.1 VAE: wan_2.1_vae, Wan2_1_VAE_bf16; not a
    Wan 2.2 one (wan2.2_vae, and wan_vae_2.2 without a 2.1 in it), nor a VAE with another decoder
    (Wan2.1_VAE_upscale2x's ends in 12 channels)."""
    name = re.split(r"[/\\]", path)[-1].lower()
    return "wan" in name and "vae" in name and not _says_wan22(name) and "upscale" not in name


def _loads_core_wan21(kind, values):
    """Whether a node of type `kind` with these widget values (or API inputs) is a core VAE loader of a
    Wan 2.1 VAE."""
    names = values.values() if isinstance(values, dict) else values if isinstance(values, list) else []
    return isinstance(kind, str) and kind.startswith(CORE_LOADER_PREFIX) and \
        any(isinstance(v, str) and _names_wan21_vae(v) for v in names)


def _refused_vae(kind, values):
    """Whether a node of type `kind` with these widget values (or API inputs) loads a WANVAE the native
    decoder refuses: a TAEHV tiny decoder, or a Wan 2.2 VAE (known by its file's name)."""
    return kind in TAEHV_LOADERS or (_is_loader(kind) and _loads_wan22(values))


# ---- UI format: links ----------------------------------------------------------------------------
# A link is [id, origin, origin_slot, target, target_slot, type], or in schema version 1 (and in
# subgraph definitions) {"id", "origin_id", "origin_slot", "target_id", "target_slot", "type"}.

def _link_id(link):
    """A link's id; None for an entry that is no link."""
    if isinstance(link, dict):
        return link.get("id")
    return link[0] if isinstance(link, list) and len(link) >= 6 else None


def _links_by_id(graph):
    return {_link_id(link): link for link in graph.get("links") or [] if _link_id(link) is not None}


def _link_origin(link):
    return link.get("origin_id") if isinstance(link, dict) else link[1]


def _link_origin_slot(link):
    return link.get("origin_slot") if isinstance(link, dict) else link[2]


def _link_target(link):
    return link.get("target_id") if isinstance(link, dict) else link[3]


def _set_link_origin(link, node_id, slot):
    if isinstance(link, dict):
        link["origin_id"], link["origin_slot"] = node_id, slot
    else:
        link[1], link[2] = node_id, slot


def _set_link_target_slot(link, slot):
    if isinstance(link, dict):
        link["target_slot"] = slot
    else:
        link[4] = slot


def _new_link(as_object, link_id, origin, origin_slot, target, target_slot, kind):
    if as_object:
        return {"id": link_id, "origin_id": origin, "origin_slot": origin_slot, "target_id": target,
                "target_slot": target_slot, "type": kind}
    return [link_id, origin, origin_slot, target, target_slot, kind]


def _input_link(node, name=None):
    """The link into a node's input `name` (None: its first linked input)."""
    for inp in node.get("inputs") or []:
        if isinstance(inp, dict) and (name is None or inp.get("name") == name) and inp.get("link") is not None:
            return inp["link"]
    return None


def _set_get_name(node):
    values = node.get("widgets_values")
    return values[0] if isinstance(values, list) and values and isinstance(values[0], str) else None


SUBGRAPH_INPUT = -10  # the id a subgraph's links start from when they come in through its inputs


def _subgraphs_by_id(workflow):
    return {sub.get("id"): sub for sub in (workflow.get("definitions") or {}).get("subgraphs") or []}


def _subgraph_input_name(sub, slot):
    inputs = sub.get("inputs") or []
    return inputs[slot].get("name") if isinstance(slot, int) and 0 <= slot < len(inputs) else None


def _instances(workflow, sub):
    """(graph, node) of every instance of subgraph `sub`."""
    return [(graph, n) for graph in _ui_graphs(workflow) for n in graph.get("nodes") or []
            if n.get("type") == sub.get("id")]


def _widget_inputs(node):
    """A node's inputs that stand for its widgets (a socket the frontend gives each widget)."""
    return [i for i in node.get("inputs") or [] if isinstance(i, dict) and i.get("widget") is not None]


def _vae_sources(workflow, graph, node):
    """What the 'vae' input of `node` (in `graph`) can come from: (graph, node) found through Reroutes,
    KJNodes' SetNode / GetNode pairs and subgraph boundaries (a subgraph's input: what feeds it in each
    instance of the subgraph, or in the one the way back came in through; a subgraph instance's output:
    what feeds it inside), None for each way that cannot be traced (unlinked, a legacy group node, a loop)."""
    found = []
    _trace_vae(workflow, graph, _input_link(node, "vae"), found, _Trace(frozenset(), set(), ()))
    return found


# on_path: the links of this way back (one met again is a loop); done: the links some way has traced (what
# they lead to is in `found` already: two ways that meet are no loop); via: the subgraph instances this way
# went into through an output, innermost last (leaving that subgraph through its input, it goes back out
# through that instance alone). A link is known by (its graph, its id, via).
_Trace = namedtuple("_Trace", "on_path done via")


def _trace_vae(workflow, graph, link_id, found, trace):
    links = _links_by_id(graph)
    nodes = {n.get("id"): n for n in graph.get("nodes") or []}
    setters = {_set_get_name(n): n for n in nodes.values() if n.get("type") == "SetNode"}
    subgraphs = _subgraphs_by_id(workflow)
    while link_id in links:
        key = (id(graph), link_id, trace.via)
        if key in trace.on_path:
            break  # a loop
        if key in trace.done:
            return
        trace.done.add(key)
        trace = trace._replace(on_path=trace.on_path | {key})
        link = links[link_id]
        if _link_origin(link) == SUBGRAPH_INPUT:
            _trace_vae_into_instances(workflow, graph, _link_origin_slot(link), found, trace)
            return
        source = nodes.get(_link_origin(link))
        if source is not None and source.get("type") == "GetNode":
            source = setters.get(_set_get_name(source))
        inner = subgraphs.get(source.get("type")) if source is not None else None
        if inner is not None:  # out of a subgraph instance: what feeds that output inside
            outputs = inner.get("outputs") or []
            slot = _link_origin_slot(link)
            feeds = outputs[slot].get("linkIds") or [] if isinstance(slot, int) and 0 <= slot < len(outputs) else []
            entered = trace._replace(via=trace.via + ((id(graph), source.get("id")),))
            for inner_link in feeds or [None]:
                _trace_vae(workflow, inner, inner_link, found, entered)
            return
        if source is None or source.get("type") not in PASS_ON:
            found.append(None if source is None or _is_group_node(source.get("type")) else (graph, source))
            return
        link_id = _input_link(source)
    found.append(None)


def _trace_vae_into_instances(workflow, sub, slot, found, trace):
    name, instances = _subgraph_input_name(sub, slot), _instances(workflow, sub)
    came_through = [(g, n) for g, n in instances if trace.via and (id(g), n.get("id")) == trace.via[-1]]
    if came_through:
        instances, trace = came_through, trace._replace(via=trace.via[:-1])
    if name is None or not instances:
        found.append(None)
        return
    for graph, instance in instances:
        _trace_vae(workflow, graph, _input_link(instance, name), found, trace)


def _is_group_node(kind):
    return isinstance(kind, str) and kind.startswith(("workflow>", "workflow/"))


def _source_kinds(workflow, sources):
    """(type, widget values) of each source node, one for each set of values it can run with; None for
    each untraced way."""
    kinds = []
    for source in sources:
        if source is None:
            kinds.append(None)
        else:
            graph, node = source
            kinds += [(node.get("type"), values) for values in _widget_value_sets(workflow, graph, node)]
    return kinds


def _widget_value_sets(workflow, graph, node):
    """The widget values a node can run with: its own, or where a widget is fed from its subgraph's input
    and an instance of the subgraph holds a value for it (older subgraphs keep a promoted widget's value
    on the instance; newer ones in the inner node, the instance holding none), that instance's in its
    place, one set per instance."""
    values = node.get("widgets_values")
    widget_inputs = _widget_inputs(node)
    if graph is None or not widget_inputs or not isinstance(values, list) or not _names_a_vae(node.get("type")):
        return [values]  # graph None: a legacy group node's; a node that is no VAE loader: no value is read
    links = _links_by_id(graph)
    sets = [values]
    for index, inp in enumerate(widget_inputs):
        link = links.get(inp.get("link"))
        held = _instance_widget_values(workflow, graph, _link_origin_slot(link)) \
            if link is not None and _link_origin(link) == SUBGRAPH_INPUT and index < len(values) else []
        held = list({json.dumps(v, sort_keys=True): v for v in held}.values())  # each value once
        if held:
            sets = [s[:index] + [v] + s[index + 1:] for s in sets for v in held]
        _expect(len(sets) <= MAX_VALUE_SETS, f"the instances of the subgraph holding node {node.get('id')!r} give its "
                f"widgets over {MAX_VALUE_SETS} combinations of values")
    return sets


def _names_a_vae(kind):
    """Whether a node of type `kind` is a loader whose widget values the patcher reads (a file's name)."""
    return _is_loader(kind) or kind in TAEHV_LOADERS or (isinstance(kind, str) and kind.startswith(CORE_LOADER_PREFIX))


def _instance_widget_values(workflow, sub, slot):
    """The value each instance of subgraph `sub` holds for the widget of its input `slot`, where it holds one."""
    name = _subgraph_input_name(sub, slot)
    found = []
    for _, instance in _instances(workflow, sub):
        values = instance.get("widgets_values")
        widgets = [i.get("name") for i in _widget_inputs(instance)]
        if isinstance(values, list) and name in widgets and widgets.index(name) < len(values):
            found.append(values[widgets.index(name)])
    return found


def _loader_or_none(source):
    """A source that is a WANVAE loader; None for one that is not (an unknown node between: a switch), untraced."""
    return source if source is not None and (_is_loader(source[0]) or source[0] in TAEHV_LOADERS) else None


def _convert_decodes(decodes, any_refused, convert):
    """decodes: (decode node, [(type, widget values or API inputs) of a node its VAE can come from, or None
    for a way that cannot be traced]). Converts each, but those whose VAE the native decoder refuses, and
    those with a way not traced to a loader where the workflow loads such a VAE anywhere (any_refused):
    (converted, kept)."""
    kept = 0
    for node, sources in decodes:
        sources = [_loader_or_none(source) for source in sources]
        if any(_refused_vae(*source) if source is not None else any_refused for source in sources):
            kept += 1
        else:
            convert(node)
    return len(decodes) - kept, kept


def _patch_ui_decodes(workflow):
    placed = [(graph, node) for graph in _ui_graphs(workflow) for node in graph.get("nodes") or []]
    placed += [(None, node) for nodes in _group_node_lists(workflow) for node in nodes]  # links not traced
    any_refused = any(_refused_vae(node.get("type"), values) for graph, node in placed
                      for values in _widget_value_sets(workflow, graph, node))
    decodes = [(node, _source_kinds(workflow, _vae_sources(workflow, graph, node)) if graph is not None else [None])
               for graph, node in placed if node.get("type") == SOURCE_TYPE]
    return _convert_decodes(decodes, any_refused, _convert_ui_node)


# ---- UI format: ComfyUI's own VAE decodes -------------------------------------------------------

def _remove_links(graph, ids):
    """Removes these links from a graph: its list, its nodes' outputs, its subgraph inputs' linkIds."""
    if isinstance(graph.get("links"), list):
        graph["links"] = [link for link in graph["links"] if _link_id(link) not in ids]
    for node in graph.get("nodes") or []:
        for out in node.get("outputs") or []:
            if isinstance(out.get("links"), list):
                out["links"] = [i for i in out["links"] if i not in ids]
    for inp in graph.get("inputs") or []:
        if isinstance(inp, dict) and isinstance(inp.get("linkIds"), list):
            inp["linkIds"] = [i for i in inp["linkIds"] if i not in ids]


def _keep_ui_inputs(graph, node, names):
    """Drops a node's inputs not named in `names`, and their links; a kept input's link follows it to its
    new slot."""
    kept, dropped = [], set()
    for inp in node.get("inputs") or []:
        if isinstance(inp, dict) and inp.get("name") in names:
            kept.append(inp)
        elif isinstance(inp, dict) and inp.get("link") is not None:
            dropped.add(inp["link"])
    if "inputs" in node:
        node["inputs"] = kept
    _remove_links(graph, dropped)
    links = _links_by_id(graph)
    for slot, inp in enumerate(kept):
        if inp.get("link") in links:
            _set_link_target_slot(links[inp["link"]], slot)


def _convert_ui_core_decode(graph, node):
    """VAE Decode -> untiled (the planner still tiles where memory asks); VAE Decode (Tiled) -> tiled at its
    tile size (the same pixels, the same range); its overlap and temporal inputs are dropped. The node
    grows to hold its two widgets (ComfyUI fits only the top-level graph's nodes to theirs on loading)."""
    tiled = node.get("type") == "VAEDecodeTiled"
    values = node.get("widgets_values")
    tile = values[0] if tiled and isinstance(values, list) and values and type(values[0]) is int else CORE_TILE_SIZE
    _convert_ui_node(node, CORE_TARGET_TYPE)
    node["widgets_values"] = [tile, tiled]
    _keep_ui_inputs(graph, node, CORE_INPUTS)
    if isinstance(node.get("size"), list):
        width, height = _pair(node["size"])
        node["size"] = [max(width, CORE_NODE_SIZE[0]), max(height, CORE_NODE_SIZE[1])]


def _every_vae_is_wan21(workflow):
    """Whether the workflow makes VAEs, all of them with a core loader of a Wan 2.1 VAE: the test for a decode
    whose VAE cannot be traced (a link-less broadcast, a legacy group node)."""
    hands_on = set(PASS_ON) | {"GetNode"} | set(_subgraphs_by_id(workflow))
    placed = [(graph, n) for graph in _ui_graphs(workflow) for n in graph.get("nodes") or []]
    placed += [(None, n) for group in _group_node_lists(workflow) for n in group]
    makers = [(graph, n) for graph, n in placed if n.get("type") not in hands_on and not _is_group_node(n.get("type"))
              and any(out.get("type") == "VAE" for out in n.get("outputs") or [])]
    return bool(makers) and all(_loads_core_wan21(n.get("type"), values) for graph, n in makers
                                for values in _widget_value_sets(workflow, graph, n))


def _patch_ui_core_decodes(workflow):
    """Core decodes of a Wan 2.1 VAE in the top-level graph and the subgraphs (a legacy group node's are
    left: its links live in another form)."""
    untraced_ok = None  # computed once, if needed
    count = 0
    for graph in _ui_graphs(workflow):
        for node in graph.get("nodes") or []:
            if node.get("type") not in CORE_SOURCE_TYPES:
                continue
            sources = _source_kinds(workflow, _vae_sources(workflow, graph, node))
            if None in sources and untraced_ok is None:
                untraced_ok = _every_vae_is_wan21(workflow)
            if all(_loads_core_wan21(*source) if source is not None else untraced_ok for source in sources):
                _convert_ui_core_decode(graph, node)
                count += 1
    return count


# ---- UI format ---------------------------------------------------------------------------------

PATCH_SIZE = [300, 30]


def _pair(value):
    """A node's pos or size as two numbers: a list, or an object {"0": a, "1": b} (some ComfyUI
    versions save them so); (0, 0) when neither."""
    if isinstance(value, dict):
        value = [value.get("0"), value.get("1")]
    if isinstance(value, list) and len(value) >= 2 and all(isinstance(v, (int, float)) for v in value[:2]):
        return value[0], value[1]
    return 0, 0


def _box(node):
    x, y = _pair(node.get("pos"))
    w, h = _pair(node.get("size"))
    return x, y, x + w, y + h


def _free_spot(nodes, loader):
    """Right of the loader, or below that, stepping down, where the new node covers no other."""
    x0, y0, x1, y1 = _box(loader)
    boxes = [_box(n) for n in nodes if n.get("pos") is not None and n.get("size") is not None]
    x = x1 + 30
    for step in range(200):
        y = y0 + 50 * step
        if not any(x < bx1 and bx0 < x + PATCH_SIZE[0] and y < by1 and by0 < y + PATCH_SIZE[1] + 30
                   for bx0, by0, bx1, by1 in boxes):
            return [x, y]
    return [x, y0]


def _ui_patch_node(node_id, nodes, loader, link_in, links_out):
    orders = [n.get("order") for n in nodes if isinstance(n.get("order"), int)]
    return {
        "id": node_id, "type": PATCH_TYPE, "pos": _free_spot(nodes, loader), "size": list(PATCH_SIZE), "flags": {},
        "order": max(orders, default=-1) + 1, "mode": loader.get("mode", 0),
        "inputs": [{"name": "vae", "type": "WANVAE", "link": link_in}],
        "outputs": [{"name": "vae", "type": "WANVAE", "slot_index": 0, "links": links_out}],
        "properties": {"cnr_id": PACK_ID, "Node name for S&R": PATCH_TYPE}, "widgets_values": [],
    }


def _next_ids(workflow):
    """A new node id and link id: past every one in use in the top-level graph and the subgraphs, and past
    the counters (schema version 1 keeps them in 'state'; ComfyUI numbers the subgraphs' nodes and links
    from the top-level graph's)."""
    graphs = list(_ui_graphs(workflow))
    states = [g["state"] for g in graphs if isinstance(g.get("state"), dict)]
    node_ids = [workflow.get("last_node_id") or 0] + [st.get("lastNodeId") or 0 for st in states]
    link_ids = [workflow.get("last_link_id") or 0] + [st.get("lastLinkId") or 0 for st in states]
    for graph in graphs:
        node_ids += [n.get("id") for n in graph.get("nodes") or []]
        link_ids += [link.get("id") if isinstance(link, dict) else link[0] if isinstance(link, list) and link else None
                     for link in graph.get("links") or []]
    return _past(node_ids), _past(link_ids)


def _past(ids):
    """The first whole number past every id that is a number (2.0 is 2 to the frontend) or a string of digits."""
    numbers = [i for i in ids if isinstance(i, (int, float)) and not isinstance(i, bool) and math.isfinite(i)]
    numbers += [int(i) for i in ids if isinstance(i, str) and i.isascii() and i.isdigit()]
    return math.floor(max(numbers, default=0)) + 1


def _set_id_counters(workflow, node_id, link_id):
    state = workflow.get("state")
    if isinstance(state, dict):
        state["lastNodeId"], state["lastLinkId"] = node_id, link_id
    if not isinstance(state, dict) or "last_node_id" in workflow:
        workflow["last_node_id"], workflow["last_link_id"] = node_id, link_id
    for sub in (workflow.get("definitions") or {}).get("subgraphs") or []:  # copies of the top-level counters
        if isinstance(sub.get("state"), dict):
            sub["state"]["lastNodeId"], sub["state"]["lastLinkId"] = node_id, link_id


def _insert_ui_vae_patches(workflow):
    """A patch node after each loader output, in the top-level graph and in each subgraph definition
    (which patches every instance of it): the output's links now leave the patch node (their ids and
    targets unchanged), and one new link joins loader and patch."""
    count = wan22 = 0
    for graph in _ui_graphs(workflow):
        patched, kept = _insert_graph_vae_patches(workflow, graph)
        count, wan22 = count + patched, wan22 + kept
    return count, wan22


def _insert_graph_vae_patches(workflow, graph):
    nodes = graph.get("nodes") or []
    links = graph.get("links") or []
    by_id = {n.get("id"): n for n in nodes}
    by_link = _links_by_id(graph)
    as_objects = any(isinstance(link, dict) for link in links)  # lists before schema 1; a subgraph's: objects
    count = wan22 = 0
    for loader in list(nodes):
        if not _is_loader(loader.get("type")):
            continue
        if any(_loads_wan22(values) for values in _widget_value_sets(workflow, graph, loader)):
            wan22 += 1  # in a subgraph, for any instance: the patch node would refuse it there
            continue
        for slot, out in enumerate(loader.get("outputs") or []):
            link_ids = [i for i in out.get("links") or [] if i in by_link and
                        _link_origin(by_link[i]) == loader.get("id") and _link_origin_slot(by_link[i]) == slot]
            if out.get("type") != "WANVAE" or not link_ids:
                continue
            if any(by_id.get(_link_target(by_link[i]), {}).get("type") == PATCH_TYPE for i in link_ids):
                continue  # the workflow's author placed one
            node_id, link_id = _next_ids(workflow)
            patch = _ui_patch_node(node_id, nodes, loader, link_id, link_ids)
            for i in link_ids:
                _set_link_origin(by_link[i], node_id, 0)
            new_link = _new_link(as_objects, link_id, loader["id"], slot, node_id, 0, "WANVAE")
            links.append(new_link)
            by_link[link_id] = new_link
            out["links"] = [link_id]
            nodes.append(patch)
            by_id[node_id] = patch
            graph["nodes"], graph["links"] = nodes, links
            _set_id_counters(workflow, node_id, link_id)
            count += 1
    return count, wan22


def _loaders_in_group_nodes(workflow):
    return sum(_is_loader(n.get("type")) for nodes in _group_node_lists(workflow) for n in nodes)


# ---- API format --------------------------------------------------------------------------------

def _api_vae_source(nodes, node):
    """(class_type, inputs) of the node a decode's VAE comes from, through the nodes that hand their 'vae'
    input on (the API format has no Reroutes or Set / Get nodes left), or None."""
    seen = set()
    while True:
        vae = (node.get("inputs") or {}).get("vae")
        node = nodes.get(str(vae[0])) if isinstance(vae, list) and len(vae) == 2 else None
        if node is None or id(node) in seen:  # unlinked, or a loop of hand-edited links
            return None
        if node["class_type"] not in PASS_ON:
            return node["class_type"], node.get("inputs")
        seen.add(id(node))


def _patch_api_decodes(nodes):
    any_refused = any(_refused_vae(n["class_type"], n.get("inputs")) for n in nodes.values())
    decodes = [(n, [_api_vae_source(nodes, n)]) for n in nodes.values() if n["class_type"] == SOURCE_TYPE]
    return _convert_decodes(decodes, any_refused, lambda node: node.update(class_type=TARGET_TYPE))


def _convert_api_core_decode(node):
    inputs = node.get("inputs") or {}
    tiled = node["class_type"] == "VAEDecodeTiled"
    node["class_type"] = CORE_TARGET_TYPE
    node["inputs"] = {name: inputs[name] for name in ("samples", "vae") if name in inputs}
    node["inputs"].update(tile_size=inputs.get("tile_size", CORE_TILE_SIZE) if tiled else CORE_TILE_SIZE,
                          enable_tiling=tiled)


def _patch_api_core_decodes(nodes):
    count = 0
    for node in nodes.values():
        if node["class_type"] in CORE_SOURCE_TYPES:
            source = _api_vae_source(nodes, node)
            if source is not None and _loads_core_wan21(*source):
                _convert_api_core_decode(node)
                count += 1
    return count


def _insert_api_vae_patches(workflow, nodes):
    """A patch node after each loader: inputs that named [loader, 0] name the patch node."""
    count = wan22 = 0
    for loader_id in [k for k, n in nodes.items() if _is_loader(n["class_type"])]:
        if _loads_wan22(nodes[loader_id].get("inputs")):
            wan22 += 1
            continue
        source = [loader_id, 0]
        consumers = [(n, name) for n in nodes.values() for name, v in (n.get("inputs") or {}).items()
                     if isinstance(v, list) and len(v) == 2 and [str(v[0]), v[1]] == source]
        if not consumers or any(n.get("class_type") == PATCH_TYPE for n, _ in consumers):
            continue
        node_id = str(max([int(k) for k in workflow if k.isascii() and k.isdigit()] + [0]) + 1)
        for n, name in consumers:
            n["inputs"][name] = [node_id, 0]
        workflow[node_id] = nodes[node_id] = {"class_type": PATCH_TYPE, "inputs": {"vae": source},
                                              "_meta": {"title": "WanVideo VAE: use native exact decode"}}
        count += 1
    return count, wan22


# ---- checks ------------------------------------------------------------------------------------

def _expect(ok, what):
    if not ok:
        raise ValueError(f"not a ComfyUI workflow this tool can read: {what}")


def _is_list_of_objects(value):
    return isinstance(value, list) and all(isinstance(v, dict) for v in value)


def _check_ui_nodes(nodes, where):
    _expect(_is_list_of_objects(nodes), f"{where} is not a list of objects")
    for node in nodes:
        name = f"node {node.get('id')!r} of {where}"
        _expect(isinstance(node.get("properties"), (dict, type(None))), f"{name} has properties that are not an object")
        outputs = node.get("outputs")
        _expect(outputs is None or _is_list_of_objects(outputs), f"{name} has outputs that are not a list of objects")
        for out in outputs or []:
            _expect(isinstance(out.get("links"), (list, type(None))), f"an output of {name} has links that are not a list")


def _check_ui(workflow):
    """The parts of a workflow in the UI format that patch_workflow reads are of the types it reads."""
    _check_ui_nodes([] if workflow["nodes"] is None else workflow["nodes"], "'nodes'")
    _expect(isinstance(workflow.get("links"), (list, type(None))), "'links' is not a list")
    for key in ("last_node_id", "last_link_id"):
        value = workflow.get(key)
        _expect(value is None or isinstance(value, (int, float)) and math.isfinite(value), f"'{key}' is not a number")
    definitions = workflow.get("definitions")
    _expect(isinstance(definitions, (dict, type(None))), "'definitions' is not an object")
    subgraphs = (definitions or {}).get("subgraphs")
    _expect(subgraphs is None or _is_list_of_objects(subgraphs), "'definitions.subgraphs' is not a list of objects")
    for i, sub in enumerate(subgraphs or []):
        _check_ui_nodes(sub.get("nodes") or [], f"subgraph {i}'s 'nodes'")
        _expect(isinstance(sub.get("links"), (list, type(None))), f"subgraph {i}'s 'links' is not a list")
    _expect(isinstance(workflow.get("state"), (dict, type(None))), "'state' is not an object")
    extra = workflow.get("extra")
    _expect(isinstance(extra, (dict, type(None))), "'extra' is not an object")
    groups = (extra or {}).get("groupNodes")
    _expect(isinstance(groups, (dict, type(None))), "'extra.groupNodes' is not an object")
    for name, group in (groups or {}).items():
        _expect(isinstance(group, dict), f"group node {name!r} is not an object")
        _check_ui_nodes(group.get("nodes") or [], f"group node {name!r}'s 'nodes'")


def _check_api(nodes):
    for key, node in nodes.items():
        _expect(isinstance(node["class_type"], str), f"node {key!r} has a class_type that is not a string")
        _expect(isinstance(node.get("inputs"), (dict, type(None))), f"node {key!r} has inputs that are not an object")


def patch_workflow(workflow, vae_patch=True, core=True):
    """Patches `workflow` (a parsed JSON object) in place: decode nodes, (vae_patch) loaders' outputs, and
    (core) ComfyUI's own VAE decodes of a Wan 2.1 VAE. Returns a PatchReport of what it changed (and
    left: loaders in legacy group nodes, of Wan 2.2). A workflow it cannot read raises ValueError
    saying which part; its structure is checked before anything changes, a value deeper in it of
    another type than ComfyUI writes may be found later, in a workflow then partly patched."""
    if not isinstance(workflow, dict):
        raise ValueError("a ComfyUI workflow is a JSON object")
    embedded = None
    if "nodes" not in workflow and isinstance(workflow.get("prompt"), dict) and \
            not any(isinstance(n, dict) and "class_type" in n for n in workflow.values()):
        # a saved /prompt request: {"client_id", "prompt": {API nodes}, "extra_data": {"extra_pnginfo":
        # {"workflow": the same graph in the UI format, which ComfyUI writes into its outputs' metadata}}}
        extra = workflow.get("extra_data")
        pnginfo = extra.get("extra_pnginfo") if isinstance(extra, dict) else None
        embedded = pnginfo.get("workflow") if isinstance(pnginfo, dict) else None
        workflow = workflow["prompt"]
    try:
        report = _patch(workflow, vae_patch, core)
        if isinstance(embedded, dict) and "nodes" in embedded:
            _patch(embedded, vae_patch, core)  # the same changes, counted once
        return report
    except (TypeError, AttributeError, KeyError, IndexError) as e:  # a value deep in it of another type
        raise ValueError(f"not a ComfyUI workflow this tool can read ({type(e).__name__}: {e})") from None
    except RecursionError:
        raise ValueError("not a ComfyUI workflow this tool can read: subgraphs nested too deeply to follow") from None


def _patch(workflow, vae_patch, core):
    if "nodes" in workflow:
        _check_ui(workflow)
        decodes, kept = _patch_ui_decodes(workflow)
        cores = _patch_ui_core_decodes(workflow) if core else 0
        if not vae_patch:
            return PatchReport(decodes, 0, 0, 0, kept, cores)
        patches, wan22 = _insert_ui_vae_patches(workflow)
        return PatchReport(decodes, patches, _loaders_in_group_nodes(workflow), wan22, kept, cores)
    nodes = {k: n for k, n in workflow.items() if isinstance(n, dict) and "class_type" in n}
    _check_api(nodes)
    decodes, kept = _patch_api_decodes(nodes)
    cores = _patch_api_core_decodes(nodes) if core else 0
    patches, wan22 = _insert_api_vae_patches(workflow, nodes) if vae_patch else (0, 0)
    _expect(nodes or not workflow, "no 'nodes' list and no node of the API format (an object with a class_type)")
    return PatchReport(decodes, patches, 0, wan22, kept, cores)


def _read_json(src):
    try:
        with open(src, encoding="utf-8-sig") as f:  # -sig: a byte order mark (Windows' Notepad) is skipped
            return json.load(f)
    except UnicodeDecodeError:
        raise ValueError(f"{src}: not a JSON text file (not UTF-8 text)") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{src}: not valid JSON ({e})") from None
    except RecursionError:
        raise ValueError(f"{src}: JSON nested too deeply to read") from None
    except ValueError as e:  # a number past Python's limit on the digits of an int
        raise ValueError(f"{src}: not JSON this tool can read ({e})") from None
    except OSError as e:
        raise OSError(e.errno, e.strerror or str(e), src) from None


def patch_workflow_file(src, dst, vae_patch=True, core=True):
    """Patches the workflow in file `src` into file `dst` (which may be `src`: it is replaced in one
    step, so a failed write leaves it as it was). ValueError for a file that is not a workflow it can
    read, OSError (its filename the file concerned) for one that cannot be read or written."""
    workflow = _read_json(src)
    try:
        report = patch_workflow(workflow, vae_patch, core)
    except ValueError as e:
        raise ValueError(f"{src}: {e}") from None
    try:
        text = json.dumps(workflow, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    except RecursionError:
        raise ValueError(f"{src}: JSON nested too deeply to write") from None
    except ValueError:  # 1e400 reads as infinity, which JSON cannot write
        raise ValueError(f"{src}: holds a number too large for a float (JSON has no infinity to write back)") from None

    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    check_target(dst)
    write_atomically(dst, write)
    return report
