"""Entry script: `mitmdump -s addon/softprobe_addon.py --set softprobe_config=config/gateway.yaml`."""

from softprobe_gateway.proxy import gateway

addons = list(gateway.addons())
