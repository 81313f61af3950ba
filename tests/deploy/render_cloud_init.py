#!/usr/bin/env python3
"""Render the cloud-init user-data the way OSM does (Jinja2 over the instantiation
parameters of one member VNF) and write it out.

usage: render_cloud_init.py TEMPLATE PARAMS_YAML MEMBER_INDEX OUT [key=value ...]
Extra key=value pairs override parameters (e.g. psk=..., which is never in the params file).
"""
import sys

import jinja2
import yaml


def main() -> int:
    template, params_file, member, out, *extra = sys.argv[1:]
    with open(params_file, encoding="utf-8") as f:
        params = yaml.safe_load(f)
    found = [
        p["additionalParams"]
        for p in params["additionalParamsForVnf"]
        if p["member-vnf-index"] == member
    ]
    if not found:
        print(f"no member-vnf-index {member} in {params_file}", file=sys.stderr)
        return 2
    values = dict(found[0])
    for kv in extra:
        k, _, v = kv.partition("=")
        values[k] = v
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    with open(template, encoding="utf-8") as f:
        text = env.from_string(f.read()).render(**values)
    with open(out, "w", encoding="utf-8") as f:
        f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
