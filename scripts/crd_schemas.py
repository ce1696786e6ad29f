"""Generate manifests/schemas/*.json (JSON Schema draft 7) from the upstream CustomResourceDefinitions.

The CRDs are read at pinned release tags (``PINS``): fetched from GitHub, or read from a local copy of each
repository (``--source owner/name=DIR``, DIR being a checkout or an export of the tag). Nothing upstream is
copied into this repository except the generated schemas, which are data.

    python scripts/crd_schemas.py                                  # fetch the pinned CRDs from GitHub
    python scripts/crd_schemas.py --source fluxcd/flagger=../flagger --check   # compare, write nothing

The conversion (what the API server's structural schema enforces, as far as JSON Schema can say it):
- each CRD version's ``openAPIV3Schema``, with ``apiVersion`` and ``kind`` pinned to that version and kind;
- objects with ``properties`` reject unknown fields (``additionalProperties: false``), as the API server
  prunes or, with strict field validation (kubectl's default since 1.27), rejects them; except where the CRD
  says ``x-kubernetes-preserve-unknown-fields``;
- ``x-kubernetes-int-or-string`` -> integer or string; ``nullable`` -> the type or null; an inline ``(?i)``
  flag moves to the front of its pattern (Go's RE2 takes it anywhere, Python's ``re`` only first);
- other ``x-kubernetes-*`` keys (CEL validations, list types) are dropped: JSON Schema cannot evaluate them.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.request
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "manifests" / "schemas"

#: (repository, tag, path of the CRD file, CRD name, version, output file)
PINS: list[tuple[str, str, str, str, str, str]] = [
    (
        "prometheus-operator/prometheus-operator",
        "v0.89.0",
        "example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml",
        "servicemonitors.monitoring.coreos.com",
        "v1",
        "servicemonitor-monitoring-v1.json",
    ),
    (
        "prometheus-operator/prometheus-operator",
        "v0.89.0",
        "example/prometheus-operator-crd/monitoring.coreos.com_podmonitors.yaml",
        "podmonitors.monitoring.coreos.com",
        "v1",
        "podmonitor-monitoring-v1.json",
    ),
    (
        "prometheus-operator/prometheus-operator",
        "v0.89.0",
        "example/prometheus-operator-crd/monitoring.coreos.com_prometheusrules.yaml",
        "prometheusrules.monitoring.coreos.com",
        "v1",
        "prometheusrule-monitoring-v1.json",
    ),
    (
        "prometheus-operator/prometheus-operator",
        "v0.89.0",
        "example/prometheus-operator-crd/monitoring.coreos.com_alertmanagerconfigs.yaml",
        "alertmanagerconfigs.monitoring.coreos.com",
        "v1alpha1",
        "alertmanagerconfig-monitoring-v1alpha1.json",
    ),
    (
        "kubernetes-sigs/gateway-api",
        "v1.4.1",
        "config/crd/standard/gateway.networking.k8s.io_httproutes.yaml",
        "httproutes.gateway.networking.k8s.io",
        "v1",
        "httproute-gateway-v1.json",
    ),
    (
        "fluxcd/flagger",
        "v1.44.0",
        "artifacts/flagger/crd.yaml",
        "canaries.flagger.app",
        "v1beta1",
        "canary-flagger-v1beta1.json",
    ),
]
DROPPED = ("x-kubernetes-", "x-metadata")


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads a bare ``=`` (a matcher's enum value) as the "value" tag; here it is the string."""


_Loader.add_constructor("tag:yaml.org,2002:value", lambda loader, node: loader.construct_scalar(node))


def read_source(repo: str, tag: str, path: str, sources: dict[str, Path]) -> str:
    """The CRD file's text: from a local copy of ``repo`` when given, else from GitHub at ``tag``."""
    if repo in sources:
        return (sources[repo] / path).read_text()
    url = f"https://raw.githubusercontent.com/{repo}/{tag}/{path}"
    with urllib.request.urlopen(url, timeout=60) as response:  # a fixed https URL
        return response.read().decode()


def find_version(text: str, crd_name: str, version: str) -> tuple[dict, dict]:
    """(CRD, the version entry) of ``crd_name`` in a (possibly multi-document) CRD file."""
    for doc in yaml.load_all(text, Loader=_Loader):  # a SafeLoader subclass
        if doc and doc.get("kind") == "CustomResourceDefinition" and doc["metadata"]["name"] == crd_name:
            for entry in doc["spec"]["versions"]:
                if entry["name"] == version:
                    return doc, entry
            raise SystemExit(f"{crd_name} has no version {version}")
    raise SystemExit(f"no CRD {crd_name} in the file")


def convert(node: Any) -> Any:
    """One OpenAPI v3 (structural) schema node -> JSON Schema draft 7, recursively."""
    if isinstance(node, list):
        return [convert(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {k: convert(v) for k, v in node.items() if not k.startswith(DROPPED) and k != "nullable"}
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    pattern = out.get("pattern")
    if isinstance(pattern, str) and "(?i)" in pattern[1:]:  # Go's RE2 takes flags anywhere, Python's first
        out["pattern"] = "(?i)" + pattern.replace("(?i)", "")
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    preserve = node.get("x-kubernetes-preserve-unknown-fields")
    if "properties" in node and "additionalProperties" not in node and not preserve:
        out["additionalProperties"] = False
    if "properties" in out:  # property names are data, not schema keywords
        out["properties"] = {k: convert(v) for k, v in node["properties"].items()}
    return out


def schema_for(crd: dict, entry: dict, repo: str, tag: str, path: str) -> dict:
    """The JSON schema of one CRD version, with apiVersion and kind fixed."""
    schema = convert(entry["schema"]["openAPIV3Schema"])
    group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
    schema["properties"]["apiVersion"] = {"const": f"{group}/{entry['name']}"}
    schema["properties"]["kind"] = {"const": kind}
    schema["required"] = sorted({*schema.get("required", []), "apiVersion", "kind", "metadata"})
    return {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "$comment": f"generated by scripts/crd_schemas.py from {repo}@{tag} {path} ({crd['metadata']['name']} "
        f"{entry['name']}); do not edit",
        **schema,
    }


def main(argv: list[str] | None = None) -> int:
    """Generate (or, with --check, compare) every pinned schema."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", action="append", default=[], metavar="OWNER/NAME=DIR")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--check", action="store_true", help="fail if a committed schema differs")
    args = parser.parse_args(argv)
    sources = {}
    for item in args.source:
        repo, sep, directory = item.partition("=")
        if not sep:
            parser.error(f"--source {item!r} must look like owner/name=DIR")
        sources[repo] = Path(directory)
    stale = []
    for repo, tag, path, crd_name, version, filename in PINS:
        crd, entry = find_version(read_source(repo, tag, path, sources), crd_name, version)
        text = json.dumps(schema_for(crd, entry, repo, tag, path), indent=1, sort_keys=True) + "\n"
        target = args.out / filename
        if args.check:
            if not target.is_file() or target.read_text() != text:
                stale.append(filename)
            continue
        target.write_text(text)
        print(f"{filename}: {repo}@{tag} {crd_name} {version}")
    if stale:
        print(f"stale schemas (regenerate with scripts/crd_schemas.py): {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
