"""The `tradewarden` command: crd, testenv, sim, run, demo."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from importlib import resources


def _script(name: str) -> str:
    return str(resources.files("tradewarden") / "scripts" / name)


def cmd_crd(args: argparse.Namespace) -> int:
    from .crd import crd_yaml
    sys.stdout.write(crd_yaml())
    return 0


def cmd_testenv(args: argparse.Namespace) -> int:
    return subprocess.call(["bash", _script("controlplane.sh"), args.action])


def cmd_sim(args: argparse.Namespace) -> int:
    from .sim.__main__ import main as sim_main
    argv = ["--host", args.host, "--port", str(args.port)]
    if args.accounts:
        argv += ["--accounts", args.accounts]
    if args.no_control:
        argv += ["--no-control"]
    return sim_main(argv)


def cmd_run(args: argparse.Namespace) -> int:
    from .controller.main import run
    return run(namespaces=args.namespace, all_namespaces=args.all_namespaces,
               standalone=args.standalone, metrics_port=args.metrics_port,
               liveness=args.liveness, peering=args.peering, verbose=args.verbose, log_format=args.log_format,
               readiness=args.readiness, shards=args.shards)


def cmd_release_finalizers(args: argparse.Namespace) -> int:
    from .uninstall import main as release_main
    return release_main(args.namespace, args.all_namespaces)


def cmd_image(args: argparse.Namespace) -> int:
    argv = ["bash", _script("image.sh"), args.action]
    if args.action == "build":
        argv.append(args.context)
    return subprocess.call(argv)


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import main as demo_main
    return demo_main(keep=args.keep, fast=args.fast, log_format=args.log_format, in_cluster=args.in_cluster)


def build_parser() -> argparse.ArgumentParser:
    from .output import FORMATS, default_format

    # --log-format is accepted before or after the subcommand (after wins when both are given)
    def log_format_option(parser: argparse.ArgumentParser, dest: str) -> None:
        parser.add_argument("--log-format", dest=dest, choices=FORMATS, default=None,
                            help="text (default) or json: one JSON object per line (env TRADEWARDEN_LOG_FORMAT). "
                                 "Colour is off when NO_COLOR is set or the output is not a terminal")

    common = argparse.ArgumentParser(add_help=False)
    log_format_option(common, "log_format")
    p = argparse.ArgumentParser(prog="tradewarden", description=__doc__)
    log_format_option(p, "log_format_global")
    p.set_defaults(default_log_format=default_format())
    sub = p.add_subparsers(dest="command", required=True)
    _add_parser = sub.add_parser
    sub.add_parser = lambda *a, **kw: _add_parser(*a, parents=[common], **kw)  # type: ignore[method-assign]

    s = sub.add_parser("crd", help="print the TradingAccount CRD (generated from the models)")
    s.set_defaults(func=cmd_crd)

    s = sub.add_parser("testenv", help="a real local kube-apiserver + etcd on 127.0.0.1")
    s.add_argument("action", choices=["setup", "start", "node", "node-stop", "stop", "status"])
    s.set_defaults(func=cmd_testenv)

    s = sub.add_parser("sim", help="the Binance-compatible exchange simulator")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8765)
    s.add_argument("--accounts", help="YAML file of accounts to create")
    s.add_argument("--no-control", action="store_true", help="disable the /sim/v1 control API")
    s.set_defaults(func=cmd_sim)

    s = sub.add_parser("run", help="run the operator (kopf)")
    s.add_argument("-n", "--namespace", action="append", default=[], help="watch this namespace (repeatable)")
    s.add_argument("-A", "--all-namespaces", action="store_true", help="watch every namespace")
    s.add_argument("--standalone", action="store_true", help="no peering (a single operator)")
    s.add_argument("--peering", default=os.environ.get("TRADEWARDEN_PEERING", "tradewarden"),
                   help="kopf peering object name (one active replica)")
    s.add_argument("--metrics-port", type=int, default=int(os.environ.get("TRADEWARDEN_METRICS_PORT", "9464")),
                   help="port of the Prometheus /metrics endpoint (0 turns it off)")
    s.add_argument("--liveness", default=os.environ.get("TRADEWARDEN_LIVENESS", "http://0.0.0.0:8080/healthz"),
                   help="kopf's liveness endpoint (off: none)")
    s.add_argument("--readiness", default=os.environ.get("TRADEWARDEN_READINESS", "off"),
                   help="readiness endpoint, e.g. http://0.0.0.0:8081/readyz: 200 once the operator is serving "
                        "(off: none)")
    s.add_argument("--shards", type=int, default=None,
                   help="split accounts across replicas in this many shards held through Leases "
                        "(TRADEWARDEN_SHARDS; 0, the default: one active replica through kopf peering)")
    s.add_argument("-v", "--verbose", action="store_true")
    s.set_defaults(func=cmd_run)

    s = sub.add_parser("release-finalizers",
                       help="remove the operator's finalizer from TradingAccounts (after an uninstall)")
    s.add_argument("-n", "--namespace", action="append", default=[], help="in this namespace (repeatable)")
    s.add_argument("-A", "--all-namespaces", action="store_true", help="in every namespace")
    s.set_defaults(func=cmd_release_finalizers)

    s = sub.add_parser("image", help="build the operator's image here (buildah, a locally made base), "
                                     "load it into the local node")
    s.add_argument("action", choices=["base", "build", "load", "inspect"])
    s.add_argument("context", nargs="?", default=".", help="build context with the Dockerfile (default: .)")
    s.set_defaults(func=cmd_image)

    s = sub.add_parser("demo", help="the whole mission in one command (control plane, simulator, operator)")
    s.add_argument("--keep", action="store_true", help="keep everything running at the end")
    s.add_argument("--fast", action="store_true", help="shorter pauses between steps")
    s.add_argument("--in-cluster", action="store_true",
                   help="run the operator as a Pod from its image (built here) on the local node, installed by helm")
    s.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.log_format = getattr(args, "log_format", None) or args.log_format_global or args.default_log_format
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
