"""Rewriting ComfyUI workflows to use the native decoder: every WanVideoDecode node becomes a
WanVideoNativeDecode node with the same links and widget values (both take the same inputs in the
same order). Handles the UI format (nodes / links, subgraph definitions included) and the API
format ({id: {"class_type", "inputs"}})."""
import json

SOURCE_TYPE = "WanVideoDecode"
TARGET_TYPE = "WanVideoNativeDecode"
PACK_ID = "wanvideo-vae"


def _patch_ui_node(node):
    if node.get("type") != SOURCE_TYPE:
        return False
    node["type"] = TARGET_TYPE
    props = node.setdefault("properties", {})
    props["Node name for S&R"] = TARGET_TYPE
    # the source pack's identity (registry id, or GitHub repo for unregistered packs) and version:
    # ComfyUI's manager would offer to install WanVideoWrapper for a node it does not have
    props.pop("ver", None)
    props.pop("aux_id", None)
    if "cnr_id" in props:
        props["cnr_id"] = PACK_ID
    return True


def _ui_node_lists(workflow):
    yield workflow.get("nodes") or []
    for sub in (workflow.get("definitions") or {}).get("subgraphs") or []:
        yield sub.get("nodes") or []


def patch_workflow(workflow):
    """Patches `workflow` (a parsed JSON object) in place; returns the number of nodes rewritten."""
    if not isinstance(workflow, dict):
        raise ValueError("a ComfyUI workflow is a JSON object")
    if "nodes" in workflow:
        return sum(_patch_ui_node(n) for nodes in _ui_node_lists(workflow) for n in nodes)
    count = 0
    for node in workflow.values():  # API format
        if isinstance(node, dict) and node.get("class_type") == SOURCE_TYPE:
            node["class_type"] = TARGET_TYPE
            count += 1
    if count == 0 and not all(isinstance(n, dict) and "class_type" in n for n in workflow.values()):
        raise ValueError("not a ComfyUI workflow: no 'nodes' list and not in the API format")
    return count


def patch_workflow_file(src, dst):
    with open(src, encoding="utf-8") as f:
        try:
            workflow = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{src}: not valid JSON ({e})") from None
    count = patch_workflow(workflow)
    with open(dst, "w", encoding="utf-8") as f:
        json.dump(workflow, f, indent=2, ensure_ascii=False)
        f.write("\n")
    return count
