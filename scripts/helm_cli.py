#!/usr/bin/env python3
"""The subset of the helm CLI the README's install commands use, on Helm's own Go SDK
(PyPI helm-python-sdk): no helm binary needed. Talks to the cluster of $KUBECONFIG (or
--kubeconfig), stores releases as Secrets, as helm does.

    scripts/helm install NAME CHART [--namespace NS] [--create-namespace] [-f FILE]... [--set K=V]...
    scripts/helm upgrade NAME CHART [--namespace NS] [-f FILE]... [--set K=V]...
    scripts/helm uninstall NAME [--namespace NS]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import yaml


def merge(into: dict[str, Any], more: dict[str, Any]) -> dict[str, Any]:
    """Helm's coalescing of user values: maps merge key by key, anything else replaces."""
    for k, v in more.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            merge(into[k], v)
        else:
            into[k] = v
    return into


def values(args: argparse.Namespace) -> dict[str, Any]:
    import helm_python as helm

    out: dict[str, Any] = {}
    for f in args.values or []:
        loaded = yaml.safe_load(Path(f).read_text()) or {}
        if not isinstance(loaded, dict):
            raise SystemExit(f"{f}: a values file must hold a map")
        merge(out, loaded)
    for s in args.set or []:
        merge(out, helm.parse_set_string(s))
    return out


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="helm", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG"))
    sub = p.add_subparsers(dest="command", required=True)
    for name in ("install", "upgrade"):
        c = sub.add_parser(name)
        c.add_argument("release")
        c.add_argument("chart")
        c.add_argument("--namespace", "-n", default="default")
        c.add_argument("--create-namespace", action="store_true")
        c.add_argument("--values", "-f", action="append")
        c.add_argument("--set", action="append")
        c.add_argument("--kubeconfig", dest="kubeconfig_sub")
    u = sub.add_parser("uninstall")
    u.add_argument("release")
    u.add_argument("--namespace", "-n", default="default")
    u.add_argument("--kubeconfig", dest="kubeconfig_sub")
    args = p.parse_args(argv)

    import helm_python as helm

    kubeconfig = getattr(args, "kubeconfig_sub", None) or args.kubeconfig
    try:
        with helm.Config(kubeconfig_path=kubeconfig, namespace=args.namespace) as cfg:
            if args.command == "install":
                r = cfg.install(args.chart, args.release, values(args), namespace=args.namespace,
                                create_namespace=args.create_namespace)
            elif args.command == "upgrade":
                r = cfg.upgrade(args.chart, args.release, values(args), namespace=args.namespace)
            else:
                cfg.uninstall(args.release)
                print(f'release "{args.release}" uninstalled')
                return 0
    except helm.HelmError as e:  # type: ignore[attr-defined]
        print(f"Error: {e}", file=sys.stderr)
        return 1
    print(f"NAME: {r['name']}\nNAMESPACE: {r['namespace']}\nSTATUS: {r['status']}\nREVISION: {r['revision']}")
    if r.get("notes"):
        print(f"NOTES:\n{r['notes']}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
