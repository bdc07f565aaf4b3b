"""`veil` command line: the gateway, its demo, and the tools around it (keys, policies, audit,
attestation, encrypted scoring). `veil COMMAND --help` describes each.

A user's mistake (a missing or unreadable file, a bad config, a bad option value) ends with a
short message on stderr and a non-zero exit, never a traceback: tests/integration/
test_cli_errors.py runs every command the parser knows with bad input to keep it so.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

from gateway import __version__
from gateway.errors import ConfigError, VeilError

if TYPE_CHECKING:
    from gateway.fhe.keys import KeyStore
    from gateway.keys.material import Signer


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _dispatch(args)
    except ConfigError as exc:
        print(f"veil: configuration error\n{exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a file missing or unreadable, an address that cannot be bound
        print(f"veil {args.command}: {_os_error(exc)}", file=sys.stderr)
        return 2
    except VeilError as exc:  # the gateway's own refusals (keys, plugins, evidence, ...)
        print(f"veil {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _os_error(exc: OSError) -> str:
    reason = exc.strerror or str(exc) or type(exc).__name__
    return f"{exc.filename}: {reason}" if exc.filename else reason


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="veil", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"veil {__version__}",
                        help="print the version and exit")
    commands = parser.add_subparsers(dest="command", required=True, title="commands",
                                     metavar="COMMAND")
    _running_commands(commands)
    _key_commands(commands)
    _config_commands(commands)
    _policy_commands(commands)
    _attest_commands(commands)
    _fhe_commands(commands)
    _describe(parser)
    return parser


def _describe(parser: argparse.ArgumentParser) -> None:
    """Each command's one-line help, shown in the command list, also heads its own --help."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for listed in action._choices_actions:
                command = action.choices[listed.dest]
                command.description = command.description or listed.help
                _describe(command)


Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
CONFIG_HELP = "the gateway's config file (default: %(default)s)"


def _whole(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None


def _port(text: str) -> int:
    value = _whole(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port (0-65535)")
    return value


def _positive(text: str) -> int:
    value = _whole(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: at least 1")
    return value


def _delay(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value <= 60_000:
        raise argparse.ArgumentTypeError(f"{text!r}: between 0 and 60000 ms")
    return value


def _k_values(text: str) -> list[int]:
    return [_positive(k) for k in text.split(",")]


def _instant(text: str) -> datetime:
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO 8601 time "
                                         "(e.g. 2025-01-31T12:00:00Z)") from None
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")  # as config.yaml's names
LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
HOSTNAME = re.compile(rf"^(?=.{{1,253}}$){LABEL}(?:\.{LABEL})*\.?$")


def _host(text: str) -> str:
    """An IP address or a DNS name (what a socket can be bound to), else a usage error
    rather than a resolver's traceback."""
    try:
        ipaddress.ip_address(text)
    except ValueError:
        if not HOSTNAME.match(text):
            raise argparse.ArgumentTypeError(f"{text!r} is not an IP address or host "
                                             "name") from None
    return text


def _name(text: str) -> str:
    if not NAME.match(text):
        raise argparse.ArgumentTypeError(f"{text!r}: letters, digits, '.', '_' and '-' only "
                                         "(64 at most, starting with a letter or digit)")
    return text


def _running_commands(commands: Commands) -> None:
    serve = commands.add_parser("serve", help="run the gateway")
    serve.add_argument("--config", default="config.yaml", help=CONFIG_HELP)
    serve.add_argument("--workers", type=_positive, default=None,
                       help="worker processes sharing the port (default: listen.workers)")
    serve.add_argument("--host", type=_host,
                       help="address to listen on (default: listen.host)")
    serve.add_argument("--port", type=_port, help="port to listen on (default: listen.port)")

    demo = commands.add_parser("demo-upstream", help="run the built-in demo model server")
    _listen_options(demo, 8081)
    demo.add_argument("--chunk-delay-ms", type=_delay, default=0.0,
                      help="pause between streamed chunks, to make streaming visible "
                           "(default: %(default)s)")

    studio = commands.add_parser(
        "studio", help="the policy studio: a web app to try, test and edit policies")
    studio.add_argument("--config", default="config.yaml", help=CONFIG_HELP)
    _listen_options(studio, 8090)
    studio.add_argument("--token-env", metavar="NAME",
                        help="environment variable holding the admin token (required when "
                             "--host is not loopback)")

    quick = commands.add_parser("quickstart",
                                help="run the demo model server and the gateway together")
    quick.add_argument("--config", default="config.yaml", help=CONFIG_HELP)
    quick.add_argument("--demo-port", type=_port, default=8081,
                       help="port of the demo model server (default: %(default)s; the "
                            "config's backends must point at it)")


def _key_commands(commands: Commands) -> None:
    apikey = commands.add_parser("apikey", help="client API keys")
    apikey_commands = apikey.add_subparsers(dest="apikey_command", required=True,
                                            title="commands", metavar="COMMAND")
    new = apikey_commands.add_parser("new", help="generate a key and print its config entry")
    new.add_argument("--name", required=True, type=_name,
                     help="the key's name in config, logs and the audit trail")
    new.add_argument("--tenant", required=True, type=_name,
                     help="the tenant it belongs to (a key of config's tenants)")
    apikey_commands.add_parser("hash", help="print the config hash of a key on stdin")

    audit = commands.add_parser("audit", help="the tamper-evident audit trail")
    audit_commands = audit.add_subparsers(dest="audit_command", required=True,
                                          title="commands", metavar="COMMAND")
    verify = audit_commands.add_parser(
        "verify", help="check MACs and the hash chain; exit 1 naming the first break")
    verify.add_argument("files", nargs="+", help="oldest first, e.g. audit.jsonl.1 audit.jsonl; "
                        "or one directory: every chain in it (one per replica and worker), "
                        "each verified on its own")
    key = verify.add_mutually_exclusive_group(required=True)
    key.add_argument("--key-file", help="file holding the audit HMAC key (audit.key_file)")
    key.add_argument("--key-env", help="name of the environment variable holding the key")
    key.add_argument("--config", help="the gateway's config: its audit key, wherever it is "
                                      "kept (an HSM: audit.key_hsm_label, PIN from hsm.pin_env)")


def _config_commands(commands: Commands) -> None:
    config = commands.add_parser("config", help="the gateway's config.yaml")
    config_commands = config.add_subparsers(dest="config_command", required=True,
                                            title="commands", metavar="COMMAND")
    config_commands.add_parser("schema", help="print the config.yaml JSON Schema "
                                              "(veil config schema > config.schema.json)")


def _policy_commands(commands: Commands) -> None:
    policy = commands.add_parser("policy", help="policy files")
    policy_commands = policy.add_subparsers(dest="policy_command", required=True,
                                            title="commands", metavar="COMMAND")
    check = policy_commands.add_parser("check", help="validate policies; exit 1 listing errors")
    check.add_argument("files", nargs="+", help="policy files (YAML)")
    policy_commands.add_parser("schema", help="print the policy JSON Schema")
    explain = policy_commands.add_parser("explain", help="what a prompt would meet, and why")
    explain.add_argument("file", help="the policy file")
    explain.add_argument("--prompt", required=True, help="the prompt text to run it on")
    explain.add_argument("--score", action="append", metavar="SCORER/MODEL/LABEL=VALUE",
                         help="a decrypted semantic score to decide with (repeatable)")
    test = policy_commands.add_parser("test", help="run example prompts against expectations")
    test.add_argument("file", help="the policy file")
    test.add_argument("--cases", required=True,
                      help="YAML file of cases: prompt, tenant, scores, expected outcome")
    keygen = policy_commands.add_parser("keygen", help="make an Ed25519 signing key pair")
    keygen.add_argument("--private", required=True,
                        help="where to write the private key (PEM; never overwritten)")
    keygen.add_argument("--public", required=True,
                        help="where to write the public key (PEM; never overwritten)")
    sign = policy_commands.add_parser("sign", help="write FILE.sig (detached Ed25519)")
    sign.add_argument("files", nargs="+", help="policy files to sign")
    sign.add_argument("--key", required=True, help="private key (PEM)")
    verify_policy = policy_commands.add_parser(
        "verify", help="verify the signatures of policies and every base they extend")
    verify_policy.add_argument("files", nargs="+", help="policy files to verify")
    verify_policy.add_argument("--pubkey", required=True, help="public key (PEM)")


def _attest_commands(commands: Commands) -> None:
    attest = commands.add_parser("attest", help="confidential-computing evidence")
    attest_commands = attest.add_subparsers(dest="attest_command", required=True,
                                            title="commands", metavar="COMMAND")
    attest_verify = attest_commands.add_parser(
        "verify", help="verify evidence offline; exit 0 only when it verifies")
    attest_verify.add_argument("file", help="the evidence: an SEV-SNP report, a TDX quote, "
                                            "NVIDIA GPU measurements (hex), or a backend's "
                                            "evidence document (JSON: every GPU part)")
    attest_verify.add_argument("--vcek", help="SNP: the VCEK/VLEK certificate (DER or PEM)")
    attest_verify.add_argument("--collateral", help="TDX: folder of collateral from Intel PCS")
    attest_verify.add_argument("--chain", help="NVIDIA GPU: the device certificate chain (PEM)")
    attest_verify.add_argument("--crl", action="append", default=[], metavar="FILE",
                               help="a CRL (DER) to check the chain against: SNP: the ARK's, "
                                    "from AMD KDS; TDX: the PCK CA's or root CA's (repeatable)")
    attest_verify.add_argument("--ocsp", action="append", default=[], metavar="FILE",
                               help="NVIDIA GPU: an OCSP response (DER) about a certificate of "
                                    "the chain (repeatable)")
    attest_verify.add_argument("--at", type=_instant,
                               help="verify as of this time (ISO 8601; default: now)")
    attest_verify.add_argument("--policy", help="a policy file whose trust level to check")
    attest_verify.add_argument("--level", help="the trust level (with --policy)")
    attest_verify.add_argument("--json", action="store_true", help="print JSON")
    agent = attest_commands.add_parser(
        "agent", help="answer the gateway's evidence requests from inside a confidential VM")
    agent.add_argument("--cert", required=True,
                       help="the TLS certificate the model server presents (PEM)")
    agent.add_argument("--key", help="its private key: serve HTTPS with it (else plain HTTP "
                                     "behind the model server's TLS front end)")
    agent.add_argument("--vcek", help="SNP: VCEK file, when the host gives no certificate table")
    agent.add_argument("--collateral", help="TDX: folder of Intel PCS collateral to send")
    agent.add_argument("--no-gpu", action="store_true",
                       help="serve CPU evidence only, even where NVIDIA's nvattest is installed")
    agent.add_argument("--staple-ocsp", metavar="CACHE_DIR",
                       help="GPU: staple NVIDIA's OCSP responses about the device chain, "
                            "fetched from its responder and kept in CACHE_DIR until they "
                            "lapse (default: none; the gateway asks the responder)")
    _listen_options(agent, 8444)
    agent.add_argument("--tsm-root", default="/sys/kernel/config/tsm/report",
                       help="the kernel's configfs-tsm report folder (default: %(default)s)")
    gateway = attest_commands.add_parser(
        "verify-gateway", help="verify a Veil gateway's own evidence; exit 0 only when it "
                               "meets the trust level and runs an expected policy set")
    gateway.add_argument("url", help="the gateway, https://HOST:PORT")
    gateway.add_argument("--policy", required=True, help="a policy file with the trust level")
    gateway.add_argument("--level", required=True, help="the trust level the gateway must meet")
    gateway.add_argument("--policy-digest", action="append", required=True, metavar="HEX",
                         help="a policy set digest the gateway may run (repeatable)")
    gateway.add_argument("--amd-roots-dir",
                         help="AMD roots (and the ARKs' CRLs) instead of the shipped ones")
    gateway.add_argument("--offline", action="store_true",
                         help="fetch nothing from AMD KDS or Intel PCS (the evidence and "
                              "--amd-roots-dir must carry it all)")
    gateway.add_argument("--timeout", type=_delay, default=10.0,
                         help="seconds for each request (default: %(default)s)")
    gateway.add_argument("--json", action="store_true", help="print JSON")


def _listen_options(parser: argparse.ArgumentParser, port: int) -> None:
    """--host and --port for a command that serves on its own (loopback by default)."""
    parser.add_argument("--host", type=_host, default="127.0.0.1",
                        help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=_port, default=port,
                        help="port to listen on (default: %(default)s)")


def _fhe_commands(commands: Commands) -> None:
    keys = commands.add_parser("keys", help="the CKKS secret key (sealed at rest); the key "
                                            "service that releases keys to attested gateways")
    keys.add_argument("keys_command", choices=["init", "rotate", "show", "serve", "seal"],
                      help="init: create the first key (never overwrites) | rotate: a new "
                           "current key | show: list the keys | serve: run the key service "
                           "(--config keys-service.yaml) | seal: generate the keys the key "
                           "service's store lacks (never replaces one)")
    keys.add_argument("--config", default="config.yaml",
                      help=CONFIG_HELP + "; serve and seal: the key service's own file")
    hsm = commands.add_parser("hsm", help="the gateway's keys in a PKCS#11 token (hsm:)")
    hsm.add_argument("hsm_command", choices=["init", "rotate", "show"],
                     help="init: create each labelled key the token lacks (never replaces) | "
                          "rotate: a new version of each, older ones kept | show: labels, "
                          "versions, attributes")
    hsm.add_argument("--config", default="config.yaml", help=CONFIG_HELP)
    hsm.add_argument("--secret", action="append", choices=["audit", "hash", "fhe", "vault"],
                     default=[], help="only this secret (repeatable; default: every labelled one)")
    scorer = commands.add_parser("scorer", help="the encrypted scoring service")
    scorer_commands = scorer.add_subparsers(dest="scorer_command", required=True,
                                            title="commands", metavar="COMMAND")
    serve = scorer_commands.add_parser("serve", help="serve the models in a folder")
    serve.add_argument("--models", required=True, help="folder of *.npz models")
    serve.add_argument("--keys", default="var/scorer-keys",
                       help="where received evaluation keys are kept (default: %(default)s)")
    _listen_options(serve, 8090)
    serve.add_argument("--workers", type=_positive, default=None,
                       help="scoring processes (default: one per core)")
    serve.add_argument("--grace-s", type=_positive, default=86_400,
                       help="drop a key epoch's evaluation keys unused this many seconds "
                            "(gateways re-send them on demand; default: %(default)s)")
    build = scorer_commands.add_parser("build", help="compile a model from example texts")
    build.add_argument("--examples", required=True,
                       help="YAML: {kind: reference_set, aggregate: max, labels: {label: [texts]}}")
    build.add_argument("--out", required=True,
                       help="the model file (.npz); its folder is created if missing")
    build.add_argument("--embedder", choices=["static", "minilm"], default="minilm",
                       help="the gateways' fhe.embedder (default: %(default)s)")
    build.add_argument("--cache", default="var/fhe-embedder",
                       help="static: the gateways' fhe.embedder_cache_dir (default: %(default)s)")
    distill = scorer_commands.add_parser(
        "distill", help="derive the static embedder's table from the pinned model (~30-40 s)")
    distill.add_argument("--cache", default="var/fhe-embedder",
                         help="the gateways' fhe.embedder_cache_dir (default: %(default)s)")
    bench = scorer_commands.add_parser("bench", help="numpy vs TenSEAL matmul vs Veil, per K")
    bench.add_argument("--k", type=_k_values, default=[10, 100, 1000],
                       help="comma-separated K values (default: 10,100,1000)")
    bench.add_argument("--compare-matmul", action="store_true",
                       help="also time TenSEAL's built-in matmul (slow at large K)")


def _dispatch(args: argparse.Namespace) -> int:
    handlers = {"serve": _serve, "demo-upstream": _demo_upstream, "quickstart": _quickstart,
                "studio": _studio,
                "apikey": _apikey, "audit": _audit_verify, "config": _config,
                "policy": _policy,
                "attest": _attest_verify, "keys": _keys, "hsm": _hsm, "scorer": _scorer}
    return handlers[args.command](args)  # argparse has refused unknown commands already


def _serve(args: argparse.Namespace) -> int:
    from gateway.keys.released import release_keys
    from gateway.preflight import preflight, serving_identity
    from gateway.server import serve
    from gateway.settings import load_settings

    settings = load_settings(args.config)
    if args.host is not None or args.port is not None:  # the command line over the config
        listen = settings.listen.model_copy(update={
            key: value for key, value in (("host", args.host), ("port", args.port))
            if value is not None})
        settings = settings.model_copy(update={"listen": listen})
    serving_identity(args.config, settings)  # the TLS key the evidence binds, and a platform
    released = release_keys(settings)  # before anything opens a key (none without key_release)
    policies = preflight(args.config, settings, released=released)
    return serve(args.config, settings, args.workers or settings.listen.workers, policies,
                 released)


def _demo_upstream(args: argparse.Namespace) -> int:
    from gateway.demo.upstream import run

    run(args.host, args.port, args.chunk_delay_ms)
    return 0


def _studio(args: argparse.Namespace) -> int:
    from gateway.settings import load_settings
    from gateway.studio.context import Studio
    from gateway.studio.server import run_studio

    token = None
    if args.token_env:
        token = os.environ.get(args.token_env)
        if not token:
            print(f"veil studio: ${args.token_env} is not set", file=sys.stderr)
            return 2
    settings = load_settings(args.config)
    try:
        run_studio(Studio(Path(args.config), settings), args.host, args.port, token)
    except ValueError as exc:
        print(f"veil studio: {exc}", file=sys.stderr)
        return 2
    return 0


def _quickstart(args: argparse.Namespace) -> int:
    from gateway.demo.quickstart import quickstart

    return int(quickstart(args.config, args.demo_port))


def _attest_verify(args: argparse.Namespace) -> int:
    if args.attest_command == "agent":
        return _attest_agent(args)
    if args.attest_command == "verify-gateway":
        return _verify_gateway(args)
    from gateway.attestation.offline import Wanted, as_json, verify_evidence_file
    from gateway.plugins import plugin_entities
    from gateway.policy.loader import load_policy

    at = args.at
    wanted = None
    if args.policy and args.level:  # attestation judges the level; the policy is ours to load
        levels = load_policy(Path(args.policy), plugin_entities).policy.trust_levels
        wanted = Wanted(args.level, levels.get(args.level))
    outcome = verify_evidence_file(
        Path(args.file), vcek=Path(args.vcek) if args.vcek else None,
        collateral=Path(args.collateral) if args.collateral else None,
        chain=Path(args.chain) if args.chain else None, at=at, wanted=wanted,
        crls=[Path(p) for p in args.crl], ocsp=[Path(p) for p in args.ocsp])
    print(as_json(outcome) if args.json else "\n".join(outcome.lines()))
    if not outcome.ok:
        print(f"veil attest verify: {args.file}: refused", file=sys.stderr)
    return 0 if outcome.ok else 1


def _attest_agent(args: argparse.Namespace) -> int:
    from gateway.attestation.agent import AgentSettings, gpu_source, run_agent

    settings = AgentSettings(Path(args.cert), Path(args.vcek) if args.vcek else None,
                             Path(args.collateral) if args.collateral else None)
    run_agent(args.host, args.port, settings, Path(args.key) if args.key else None,
              Path(args.tsm_root), gpu=gpu_source(enabled=not args.no_gpu),
              staple_ocsp=Path(args.staple_ocsp) if args.staple_ocsp else None)
    return 0


def _verify_gateway(args: argparse.Namespace) -> int:
    import asyncio
    import json

    from gateway.client.verify import Expected, verify_gateway
    from gateway.plugins import plugin_entities
    from gateway.policy.loader import load_policy
    from gateway.settings import AttestationSettings

    level = load_policy(Path(args.policy), plugin_entities).policy.trust_levels.get(args.level)
    if level is None:
        print(f"veil attest verify-gateway: {args.policy} has no trust level {args.level!r}",
              file=sys.stderr)
        return 2
    try:
        expected = Expected.of(args.level, level, args.policy_digest)
    except ValueError as exc:
        print(f"veil attest verify-gateway: --policy-digest {exc}", file=sys.stderr)
        return 2
    attestation = AttestationSettings(cache_dir=None, amd_roots_dir=args.amd_roots_dir)
    if args.offline:
        attestation = attestation.model_copy(update={"amd_kds_url": None, "intel_pcs_url": None})
    verdict = asyncio.run(verify_gateway(args.url, expected, attestation=attestation,
                                         timeout_s=args.timeout))
    if args.json:
        print(json.dumps({"ok": verdict.ok, **verdict.values, "reasons": verdict.reasons},
                         indent=2))
    else:
        print("\n".join(verdict.lines()))
    if not verdict.ok:
        print(f"veil attest verify-gateway: {args.url}: refused", file=sys.stderr)
    return 0 if verdict.ok else 1


def _keys(args: argparse.Namespace) -> int:
    if args.keys_command in ("serve", "seal"):
        return _key_service(args.keys_command, args.config)
    import asyncio

    from gateway.errors import CustodyError
    from gateway.fhe.keys import KeyStore
    from gateway.keys.released import release_keys
    from gateway.keys.sources import GatewayKeys
    from gateway.settings import load_settings

    settings = load_settings(args.config)
    fhe = settings.fhe
    try:
        # a released master key: asked of the key service, as the gateway does (in its TEE)
        keys = GatewayKeys(settings, os.environ,
                           release_keys(settings) if settings.released("fhe") else None)
    except CustodyError as exc:
        print(f"veil keys: {exc}", file=sys.stderr)
        return 1
    try:
        store = KeyStore(Path(fhe.keys_dir), keys.fhe_master())
        if fhe.keys_in == "redis":
            asyncio.run(_shared_keys(args.keys_command, settings.state.redis_url or "", store))
        elif args.keys_command == "init":
            print(f"created {store.init()} in {fhe.keys_dir}")
        elif args.keys_command == "rotate":
            print(f"rotated: {store.rotate()} is current; older keys stay sealed in "
                  f"{fhe.keys_dir} until you delete them")
        else:
            for entry in store.show():
                print(f"{entry['key_id']}  current={entry['current']}")
    except CustodyError as exc:
        print(f"veil keys: {exc}", file=sys.stderr)
        return 1
    finally:
        keys.close()
    return 0


def _key_service(command: str, config: str) -> int:
    from gateway.keys import service_run

    if command == "seal":
        for line in service_run.seal(config):
            print(line)
        return 0
    service_run.serve(config)
    return 0


def _hsm(args: argparse.Namespace) -> int:
    from gateway.keys import admin
    from gateway.keys.sources import GatewayKeys
    from gateway.settings import load_settings

    keys = GatewayKeys(load_settings(args.config), os.environ)
    try:
        if args.hsm_command == "show":
            lines = admin.show(keys)
        else:
            lines = getattr(admin, args.hsm_command)(keys, args.secret)
    finally:
        keys.close()
    for line in lines:
        print(line)
    return 0


async def _shared_keys(command: str, redis_url: str, local: KeyStore) -> None:
    """`veil keys` with `fhe.keys_in: redis`: the epochs every replica uses. `init` imports
    the epochs of keys_dir if it has any (the newest becomes current), else makes one."""
    from gateway.fhe.shared_keys import one_off_store

    async with one_off_store(redis_url, local.master_key) as store:
        if command == "init":
            key_id, imported = await store.init(import_from=local)
            print(f"imported {imported} epochs from {local.directory} into Redis; {key_id} is "
                  "current" if imported else f"created {key_id} in Redis")
        elif command == "rotate":
            print(f"rotated: {await store.rotate()} is current for every replica (each "
                  "picks it up within a second or two); older keys stay sealed in Redis")
        else:
            for entry in await store.show():
                print(f"{entry['key_id']}  current={entry['current']}")
            if (await store.pointer()).refused:
                print("warning: veil:fhe:current holds a value no gateway wrote (ignored)",
                      file=sys.stderr)


def _scorer(args: argparse.Namespace) -> int:
    if args.scorer_command == "serve":
        from aiohttp import web

        from gateway.fhe.scorer import ScorerSettings, build_scorer_app

        settings = ScorerSettings(Path(args.models), Path(args.keys), grace_s=args.grace_s)
        if args.workers:
            settings = ScorerSettings(settings.models_dir, settings.keys_dir, args.workers,
                                      args.grace_s)
        web.run_app(build_scorer_app(settings), host=args.host, port=args.port,
                    access_log=None, print=None)
        return 0
    if args.scorer_command == "build":
        return _scorer_build(Path(args.examples), Path(args.out), args.embedder, args.cache)
    if args.scorer_command == "distill":
        return _scorer_distill(args.cache)
    from gateway.fhe.bench import run_bench

    run_bench(args.k, compare_matmul=args.compare_matmul)
    return 0


def _scorer_distill(cache: str) -> int:
    from gateway.fhe.static_embed import StaticEmbedder, distill

    started = time.monotonic()
    path = distill(cache, _progress("distilled", started))
    StaticEmbedder(cache, build_missing=False)  # verified as a gateway will verify it
    print(f"wrote {path} ({time.monotonic() - started:.1f} s)")
    return 0


def _scorer_build(examples: Path, out: Path, embedder_name: str, cache: str) -> int:
    from gateway.fhe.build import build_model
    from gateway.fhe.embed import Embedder, TextEmbedder
    from gateway.fhe.static_embed import StaticEmbedder

    if out.is_dir():
        print(f"veil scorer build: --out {out} is a folder; give the model file's path",
              file=sys.stderr)
        return 2
    out.parent.mkdir(parents=True, exist_ok=True)  # before the work, not after it
    started = time.monotonic()
    _say("loading the embedding model")
    embedder: TextEmbedder = Embedder() if embedder_name == "minilm" else StaticEmbedder(cache)
    _say(f"embedding model loaded ({time.monotonic() - started:.1f} s)")
    model = build_model(examples, out, embedder, _progress("embedded", started))
    print(f"wrote {out}: {model.kind}, {model.weights.shape[0]} rows, labels "
          f"{sorted(set(model.labels))}, embedder {model.embedder} "
          f"({time.monotonic() - started:.1f} s)")
    return 0


def _say(line: str) -> None:
    print(f"veil: {line}", file=sys.stderr, flush=True)


def _progress(verb: str, started: float, every_s: float = 1.0) -> Callable[[int, int], None]:
    """A progress callback printing `verb done/total` on stderr about once a second, and when
    the last is done (stdout keeps only the result)."""
    last = time.monotonic()

    def report(done: int, total: int) -> None:
        nonlocal last
        now = time.monotonic()
        if done == total or now - last >= every_s:
            last = now
            _say(f"{verb} {done}/{total} ({now - started:.1f} s)")

    return report


def _apikey(args: argparse.Namespace) -> int:
    from gateway.ingress.auth import hash_api_key, new_api_key

    if args.apikey_command == "hash":
        key = sys.stdin.readline().strip()
        if not key:
            print("veil apikey hash: no API key on stdin (echo KEY | veil apikey hash)",
                  file=sys.stderr)
            return 2
        print(hash_api_key(key))
        return 0
    key = new_api_key()
    print(f"API key (shown once, give it to the client): {key}")
    print("Add to config.yaml under api_keys:")
    print(f"  - name: {args.name}\n    tenant: {args.tenant}\n    hash: {hash_api_key(key)}")
    return 0


def _config(args: argparse.Namespace) -> int:
    """`veil config schema`: the one subcommand (argparse has refused others)."""
    import json

    from gateway.settings import Settings

    print(json.dumps(Settings.model_json_schema(), indent=2, sort_keys=True))
    return 0


def _policy(args: argparse.Namespace) -> int:
    import json

    from gateway.policy.loader import load_policy
    from gateway.policy.schema import Policy

    if args.policy_command == "schema":
        print(json.dumps(Policy.model_json_schema(), indent=2, sort_keys=True))
        return 0
    if args.policy_command in ("keygen", "sign", "verify"):
        return _policy_signatures(args)
    if args.policy_command in ("explain", "test"):
        return _policy_cases(args)
    from gateway.attestation.binding import policy_set_digest
    from gateway.plugins import plugin_entities

    failed = 0
    in_order: list[tuple[str, str]] = []
    for file in args.files:
        try:
            loaded = load_policy(file, plugin_entities)
        except ConfigError as exc:
            failed += 1
            print(exc)
        else:
            print(f"ok: {file}: policy {loaded.name} {loaded.digest}")
            in_order.append((loaded.name, loaded.digest))
    if not failed:  # what a self-attesting gateway with policies.files in this order states
        print(f"policy set: {policy_set_digest(in_order)}")
    return _failures("policy check", failed, len(args.files), "file")


def _policy_cases(args: argparse.Namespace) -> int:
    import asyncio

    from gateway.explain import analyze, check, run_cases
    from gateway.plugins import plugin_entities
    from gateway.policy.cases import load_cases
    from gateway.policy.loader import load_policy

    loaded = load_policy(args.file, plugin_entities)
    if args.policy_command == "explain":
        scores = dict(_score_arg(s) for s in args.score or [])
        analysis = asyncio.run(analyze(loaded, [(args.prompt, scores, "*")]))[0]
        print(f"policy {loaded.name} ({' <- '.join(loaded.files)})")
        for entity, text, detector, score in analysis.findings:
            print(f"  found {entity:<13} {text!r} (by {detector}, score {score:.2f})")
        print("\n".join(analysis.protection.decision.lines()))
        print(f"sent upstream: {analysis.sent!r}" if analysis.sent is not None
              else "sent upstream: nothing (blocked)")
        return 0
    cases = load_cases(args.cases)
    analyses = asyncio.run(run_cases(loaded, cases))
    failures = 0
    print(f"{'result':<7} {'case':<48} {'expected':<34} got")
    for case, analysis in zip(cases, analyses, strict=True):
        ok, got = check(analysis, case)
        failures += not ok
        expected = f"{case.expect.outcome} {case.expect.rule or '*'}"
        print(f"{'PASS' if ok else 'FAIL':<7} {case.name[:48]:<48} {expected:<34} {got}")
    print(f"{len(cases) - failures} passed, {failures} failed")
    return 1 if failures else 0


def _score_arg(text: str) -> tuple[str, float]:
    key, _, value = text.partition("=")
    try:
        return key, float(value)
    except ValueError:
        raise SystemExit(f"veil: --score wants scorer/model/label=number, got {text!r}") from None


def _policy_signatures(args: argparse.Namespace) -> int:
    from gateway.errors import SignatureError
    from gateway.plugins import plugin_entities
    from gateway.policy import signing
    from gateway.policy.loader import load_policy

    try:
        if args.policy_command == "keygen":
            signing.generate(Path(args.private), Path(args.public))
            print(f"private key: {args.private} (keep it secret)\npublic key: {args.public}")
            return 0
        if args.policy_command == "sign":
            for file in args.files:
                print(f"signed: {signing.sign(Path(file), Path(args.key))}")
            return 0
        public_key = signing.load_public_key(Path(args.pubkey))
    except (OSError, ValueError, SignatureError) as exc:
        print(f"veil: {exc}", file=sys.stderr)
        return 2
    failed = 0
    for file in args.files:
        try:
            signing.verify_chain(load_policy(file, plugin_entities).files, public_key)
            print(f"ok: {file}")
        except (SignatureError, ConfigError) as exc:
            failed += 1
            print(f"FAILED: {exc}")
    return _failures("policy verify", failed, len(args.files), "file")


def _failures(command: str, failed: int, total: int, thing: str) -> int:
    """Verdicts go to stdout, one per item; when any failed, a line on stderr says how many
    (so a script, or a person who sent stdout elsewhere, sees it) and the exit is 1."""
    if not failed:
        return 0
    print(f"veil {command}: {failed} of {total} {thing}{'s' if total > 1 else ''} failed",
          file=sys.stderr)
    return 1


def _audit_verify(args: argparse.Namespace) -> int:
    from gateway.keys.released import release_keys
    from gateway.keys.sources import GatewayKeys
    from gateway.observability.audit import load_key
    from gateway.settings import load_settings

    if args.config:
        settings = load_settings(args.config)
        # a released audit key: asked of the key service, as the gateway does (in its TEE)
        keys = GatewayKeys(settings, os.environ,
                           release_keys(settings) if settings.released("audit") else None)
        try:
            return _verified(args.files, keys.audit())
        finally:
            keys.close()
    try:
        key: bytes | Signer = load_key(args.key_file, args.key_env)
    except (OSError, ValueError) as exc:
        print(f"veil: cannot read the audit key: {exc}", file=sys.stderr)
        return 2
    return _verified(args.files, key)


def _verified(files: list[str], key: bytes | Signer) -> int:
    from gateway.observability.audit import chains, verify

    if len(files) == 1 and Path(files[0]).is_dir():
        found = chains(files[0])
        if not found:
            print(f"FAILED: no audit chain (*.jsonl) in {files[0]}")
            return _failures("audit verify", 1, 1, "chain")
        verdicts = {chain: verify(files, key) for chain, files in found.items()}
        for chain, verdict in verdicts.items():
            print(("ok: " if verdict.ok else "FAILED: ") + f"{chain}: {verdict.message}")
        return _failures("audit verify", sum(not v.ok for v in verdicts.values()),
                         len(verdicts), "chain")
    verdict = verify(files, key)
    print(("ok: " if verdict.ok else "FAILED: ") + verdict.message)
    return _failures("audit verify", not verdict.ok, 1, "chain")
