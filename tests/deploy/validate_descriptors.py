#!/usr/bin/env python3
"""Validate the OSM descriptors against the ETSI SOL006 v2.7.1 YANG modules (yangson).

The VNFD and NSD are placed together under SOL006's `nfv` container (so the NSD's
references to the VNFD resolve), after removing the OSM-specific additions listed in
OSM_ADDITIONS — every other key must be SOL006. Then the OSM-level wiring is checked:
the cloud-init file exists, each day-2 primitive has its playbook, the NSD references
this VNFD, and the access MTU in the descriptors is the one `l2s-vnf check` computes.

usage: validate_descriptors.py REPO_ROOT YANG_DIR EXPECTED_ACCESS_MTU
"""
import copy
import json
import os
import re
import sys
import tempfile

import yaml
from yangson import DataModel
from yangson.enumerations import ContentType

# (descriptor, path) of every key that is OSM's, not SOL006's. `*` walks a list.
OSM_ADDITIONS = [
    ("vnfd", ["mgmt-cp"]),
    ("vnfd", ["vdu", "*", "cloud-init-file"]),
    ("vnfd", ["vdu", "*", "int-cpd", "*", "virtual-network-interface-requirement", "*", "virtual-interface"]),
    ("vnfd", ["ext-cpd", "*", "port-security-enabled"]),
    ("vnfd", ["df", "*", "lcm-operations-configuration", "operate-vnf-op-config", "day1-2"]),
    ("nsd", ["virtual-link-desc", "*", "mgmt-network"]),
]

IETF_IMPORTS = [("ietf-inet-types", "2013-07-15"), ("ietf-yang-types", "2013-07-15")]

PRIMITIVES = ["add-vlan", "remove-vlan", "add-peer", "remove-peer", "status"]


def strip(node, path):
    if not path:
        return
    head, rest = path[0], path[1:]
    if head == "*":
        for item in node:
            strip(item, rest)
        return
    if not isinstance(node, dict) or head not in node:
        return
    if rest:
        strip(node[head], rest)
        if node[head] in ({}, []):
            del node[head]
    else:
        del node[head]


def qualify(node, key=None):
    """SOL006 identities in JSON need their module prefix."""
    identity_leaves = {"layer-protocol", "algorithm", "type-of-storage"}
    if isinstance(node, dict):
        return {k: qualify(v, k) for k, v in node.items()}
    if isinstance(node, list):
        return [qualify(v, key) for v in node]
    if key in identity_leaves and isinstance(node, str) and ":" not in node:
        return "etsi-nfv-descriptors:" + node
    # RFC 7951: decimal64 and 64-bit integers are JSON strings.
    if isinstance(node, float) or (key in {"size-of-storage", "size", "min-disk", "root", "leaf"} and isinstance(node, int)):
        return str(node)
    return node


def library(yang_dir):
    return {
        "ietf-yang-library:modules-state": {
            "module-set-id": "l2s-sol006",
            "module": [
                {
                    "name": "etsi-nfv-descriptors",
                    "revision": "2019-10-01",
                    "namespace": "urn:etsi:nfv:yang:etsi-nfv-descriptors",
                    "conformance-type": "implement",
                    "submodule": [
                        {"name": n, "revision": "2019-10-01"}
                        for n in ("etsi-nfv-common", "etsi-nfv-ns", "etsi-nfv-vnf", "etsi-nfv-pnf")
                    ],
                },
                *[
                    {"name": n, "revision": r, "namespace": f"urn:ietf:params:xml:ns:yang:{n}", "conformance-type": "import"}
                    for n, r in IETF_IMPORTS
                ],
            ],
        }
    }


def ietf_dir():
    """pyang ships the IETF modules SOL006 imports."""
    import pyang

    for base in (sys.prefix, os.path.dirname(os.path.dirname(pyang.__file__))):
        d = os.path.join(base, "share", "yang", "modules", "ietf")
        if os.path.exists(os.path.join(d, "ietf-inet-types.yang")):
            return d
    raise SystemExit("ietf-inet-types.yang not found (pip install pyang)")


def without_deref(src, dst):
    """yangson cannot evaluate XPath deref(): those leafrefs become plain strings and those
    `must` statements are dropped (counted and printed; every other constraint stays)."""
    leafref = re.compile(r'type leafref\s*\{\s*path\s+"deref\([^"]*"(\s*\+\s*"[^"]*")*;\s*\}')
    must = re.compile(r'must\s+"[^"]*deref\([^"]*"\s*(\{[^{}]*\}|;)')
    total = 0
    for name in os.listdir(src):
        if not name.endswith(".yang"):
            continue
        with open(os.path.join(src, name), encoding="utf-8") as f:
            text = f.read()
        text, a = leafref.subn("type string;", text)
        text, b = must.subn("", text)
        total += a + b
        with open(os.path.join(dst, name), "w", encoding="utf-8") as f:
            f.write(text)
    return total


def main() -> int:
    root, yang_dir, expected_mtu = sys.argv[1], sys.argv[2], int(sys.argv[3])
    vnf_dir = os.path.join(root, "descriptors/osm/l2s_vnf")
    with open(os.path.join(vnf_dir, "l2s_vnfd.yaml"), encoding="utf-8") as f:
        vnfd = yaml.safe_load(f)["vnfd"]
    problems = []
    for nsd_file, params_file in NS_PACKAGES:
        with open(os.path.join(root, nsd_file), encoding="utf-8") as f:
            nsd = yaml.safe_load(f)["nsd"]["nsd"][0]
        validate_ns(root, yang_dir, vnf_dir, vnfd, nsd, params_file, expected_mtu, problems)
    for p in problems:
        print(p, file=sys.stderr)
    if problems:
        return 1
    print(f"SOL006 valid (OSM additions removed: {len(OSM_ADDITIONS)} paths; {len(NS_PACKAGES)} NS packages); wiring and MTU {expected_mtu} consistent")
    return 0


# Each NS package: its descriptor and its instantiation parameters.
NS_PACKAGES = [
    ("descriptors/osm/l2s_ns/l2s_nsd.yaml", "descriptors/osm/l2s_ns/params-3sites.yaml"),
    ("descriptors/osm/l2s_evpn_ns/l2s_evpn_nsd.yaml", "descriptors/osm/l2s_evpn_ns/params-evpn.yaml"),
]


def validate_ns(root, yang_dir, vnf_dir, vnfd, nsd, params_file, expected_mtu, problems):
    """Wiring, parameters and SOL006 validity of one NS package (problems appended)."""
    # OSM wiring.
    for vdu in vnfd["vdu"]:
        ci = os.path.join(vnf_dir, "cloud_init", vdu["cloud-init-file"])
        if not os.path.exists(ci):
            problems.append(f"VDU {vdu['id']}: cloud-init file {ci} missing")
    day12 = vnfd["df"][0]["lcm-operations-configuration"]["operate-vnf-op-config"]["day1-2"][0]
    names = [p["name"] for p in day12["config-primitive"]]
    for p in PRIMITIVES:
        if p not in names:
            problems.append(f"config primitive {p} missing")
        if not os.path.exists(os.path.join(root, "ansible", f"{p}.yml")):
            problems.append(f"config primitive {p} has no playbook ansible/{p}.yml")
    if nsd["vnfd-id"] != [vnfd["id"]]:
        problems.append(f"NSD vnfd-id {nsd['vnfd-id']} is not [{vnfd['id']}]")
    with open(os.path.join(root, params_file), encoding="utf-8") as f:
        params = yaml.safe_load(f)
    members = {p["id"] for p in nsd["df"][0]["vnf-profile"]}
    given = {p["member-vnf-index"] for p in params["additionalParamsForVnf"]}
    if members != given:
        problems.append(f"{params_file}: members {sorted(given)}, the NSD has {sorted(members)}")
    for p in params["additionalParamsForVnf"]:
        mtu = p["additionalParams"]["access_mtu"]
        if mtu != expected_mtu:
            problems.append(f"{p['member-vnf-index']}: access_mtu {mtu}, l2s-vnf computes {expected_mtu}")
    for vl in nsd["virtual-link-desc"]:
        if vl["id"].startswith("vlan") and f"MTU = access MTU, {expected_mtu}" not in vl.get("description", ""):
            problems.append(f"NSD VL {vl['id']} does not state the access MTU {expected_mtu}")

    # SOL006.
    docs = {"vnfd": copy.deepcopy(vnfd), "nsd": copy.deepcopy(nsd)}
    for which, path in OSM_ADDITIONS:
        strip(docs[which], path)
    instance = {"etsi-nfv-descriptors:nfv": qualify({"vnfd": [docs["vnfd"]], "nsd": [docs["nsd"]]})}
    with tempfile.TemporaryDirectory() as d:
        relaxed = without_deref(yang_dir, d)
        lib = os.path.join(d, "yang-library.json")
        with open(lib, "w", encoding="utf-8") as f:
            json.dump(library(yang_dir), f)
        dm = DataModel.from_file(lib, [d, ietf_dir()])
    print(f"deref() constraints not evaluated by yangson: {relaxed}")
    def invalid(doc):
        try:
            dm.from_raw(doc).validate(ctype=ContentType.config)
        except Exception as e:  # yangson raises several types; all mean "invalid"
            return f"{type(e).__name__}: {e}"
        return None

    err = invalid(instance)
    if err:
        problems.append(f"SOL006 validation: {err}")
    # The validator itself must be able to say no: an unknown key and a missing mandatory
    # one are both refused.
    bogus = copy.deepcopy(instance)
    bogus["etsi-nfv-descriptors:nfv"]["vnfd"][0]["bogus-key"] = 1
    missing = copy.deepcopy(instance)
    del missing["etsi-nfv-descriptors:nfv"]["vnfd"][0]["vnfm-info"]
    for what, doc in (("unknown key", bogus), ("missing vnfm-info", missing)):
        if invalid(doc) is None:
            problems.append(f"the validator accepted a descriptor with a {what}")



if __name__ == "__main__":
    sys.exit(main())
