#!/usr/bin/env python3
"""Parse a HOT template with Heat's own loader (python-heatclient) and check what a stack
create would trip over first: the version, that every get_param names a declared parameter,
every get_resource/get_attr/depends_on a defined resource, resource types Heat has, and that
the access networks take the access MTU and the access ports have port security off.

usage: validate_hot.py TEMPLATE EXPECTED_ACCESS_MTU
"""
import sys

from heatclient.common import template_format

KNOWN_TYPES = {
    "OS::Heat::CloudConfig", "OS::Heat::ResourceGroup", "OS::Neutron::Net",
    "OS::Neutron::Port", "OS::Neutron::SecurityGroup", "OS::Neutron::Subnet",
    "OS::Nova::Server",
}
VERSIONS = {"2018-08-31", "2021-04-16", "rocky", "wallaby"}


def walk(node, found):
    if isinstance(node, dict):
        for k, v in node.items():
            if k in ("get_param", "get_resource", "get_attr"):
                target = v[0] if isinstance(v, list) else v
                found.append((k, target))
            walk(v, found)
    elif isinstance(node, list):
        for v in node:
            walk(v, found)


def main() -> int:
    path, mtu = sys.argv[1], int(sys.argv[2])
    with open(path, encoding="utf-8") as f:
        tpl = template_format.parse(f.read())
    problems = []
    if str(tpl.get("heat_template_version")) not in VERSIONS:
        problems.append(f"heat_template_version {tpl.get('heat_template_version')}")
    params, resources = tpl.get("parameters", {}), tpl.get("resources", {})
    refs = []
    walk(resources, refs)
    walk(tpl.get("outputs", {}), refs)
    for kind, target in refs:
        pool = params if kind == "get_param" else resources
        if isinstance(target, str) and target not in pool and not target.startswith("<%"):
            problems.append(f"{kind} {target}: not declared")
    for name, r in resources.items():
        types = [r["type"]]
        if r["type"] == "OS::Heat::ResourceGroup":
            types.append(r["properties"]["resource_def"]["type"])
        problems += [f"{name}: unknown type {t}" for t in types if t not in KNOWN_TYPES]
        for dep in [r.get("depends_on")] if isinstance(r.get("depends_on"), str) else r.get("depends_on", []) or []:
            if dep not in resources:
                problems.append(f"{name}: depends_on {dep} undefined")
    if params.get("access_mtu", {}).get("default") != mtu:
        problems.append(f"access_mtu default {params.get('access_mtu', {}).get('default')}, l2s-vnf computes {mtu}")
    net = resources["access_networks"]["properties"]["resource_def"]["properties"]
    if net.get("value_specs", {}).get("mtu") != {"get_param": "access_mtu"}:
        problems.append("access networks do not take access_mtu")
    port = resources["access_ports"]["properties"]["resource_def"]["properties"]
    if port.get("port_security_enabled") is not False:
        problems.append("access ports keep port security (foreign MACs would be dropped)")
    for p in problems:
        print(p, file=sys.stderr)
    if not problems:
        print(f"HOT {path}: parsed by heatclient, {len(resources)} resources, {len(refs)} references resolved")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
