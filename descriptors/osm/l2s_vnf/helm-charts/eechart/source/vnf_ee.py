"""OSM helm execution environment for l2s-vnf: each primitive runs one Ansible playbook of
the l2s-vnf repository against the VNF's VM (its management address, from the `config`
primitive), with the primitive's parameters as extra variables."""
import asyncio
import json
import os

PLAYBOOKS = os.environ.get("L2S_PLAYBOOKS", "/app/ansible")
# primitive -> (playbook, {primitive parameter: playbook variable})
PRIMITIVES = {
    "add-vlan": ("add-vlan.yml", {"vlan-id": "vlan_id", "vni": "vni", "ports": "ports", "peers": "peers"}),
    "remove-vlan": ("remove-vlan.yml", {"vlan-id": "vlan_id"}),
    "add-peer": ("add-peer.yml", {"peer-name": "peer_name", "peer-address": "peer_address",
                                  "peer-psk-file": "peer_psk_file"}),
    "remove-peer": ("remove-peer.yml", {"peer-name": "peer_name"}),
    "status": ("status.yml", {}),
}


class VnfEE:
    def __init__(self, config_params):
        self.host = config_params.get("ssh-hostname")
        self.user = config_params.get("ssh-username", "debian")

    async def config(self, id, params):  # noqa: A002 (OSM's signature)
        self.host = params.get("ssh-hostname", self.host)
        self.user = params.get("ssh-username", self.user)
        yield "OK", "ssh target set"

    async def run(self, primitive, params):
        book, names = PRIMITIVES[primitive]
        extra = {var: params[p] for p, var in names.items() if p in params and params[p] != ""}
        # The playbooks target the group l2s_sites: an inventory of this one VM in it.
        inventory = f"/tmp/l2s-ee-{os.getpid()}.ini"
        with open(inventory, "w", encoding="utf-8") as f:
            f.write(f"[l2s_sites]\n{self.host} ansible_user={self.user}\n")
        cmd = ["ansible-playbook", "-i", inventory, "-e", json.dumps(extra),
               os.path.join(PLAYBOOKS, book)]
        proc = await asyncio.create_subprocess_exec(
            *cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out, _ = await proc.communicate()
        yield ("OK" if proc.returncode == 0 else "ERROR"), out.decode(errors="replace")[-4000:]


def _primitive(name):
    async def handler(self, id, params):  # noqa: A002
        async for r in self.run(name, params):
            yield r
    return handler


for _name in PRIMITIVES:
    setattr(VnfEE, _name.replace("-", "_"), _primitive(_name))
