"""Whether a bundle folder may run: the one owner of shapeqc's trust model (threat model: docs/security.md).

A MONAI bundle is code: its configs name classes to build (``_target_``), Python expressions (``$...``), imports
and macros that pull in other files. A bundle shared between sites must therefore be vouched for, or be shown to
run nothing but what analysis needs. The decision is made before any config of the bundle is parsed:

1. ``bundle_digest``: sha256 over every file of the bundle folder (names and contents), computed first.
2. A digest of a bundle shipped with this package (``shipped_bundles.json``, written from the repository's
   ``bundles/`` by ``python -m shapeqc.bundle.trust --write-shipped``) is trusted.
3. A digest in the user's trust store (``shapeqc trust BUNDLE`` records it, after printing what the bundle's
   configs would run) is trusted.
4. ``--trust-bundle PATH`` trusts that folder for one run, after printing the same summary.
5. Any other bundle is *checked*: its analysis parts (``network_def``, ``to_grid``, ``inferer``, ``to_source``)
   are read from the config as MONAI will run it (the files merged, ``%`` macros and relative ``@##`` ids
   expanded, ``_meta_`` included) and must hold only components of :data:`ALLOWED_TARGETS`, literal arguments or
   references to items that are themselves checked, no ``$`` expression, no ``_mode_`` or ``_requires_``, and no
   ``+`` / ``#`` keys; anywhere in the whole config, an import statement (MONAI evaluates every one of them as soon
   as any item is resolved) may import only :data:`ALLOWED_IMPORT_ROOTS`, and no macro may be left unexpanded.
   Anything else is a :class:`BundleTrustError` naming the file, the id and the reason, and nothing has run.

Training a bundle (federated sites) runs its training config, which is code by design: only a trusted bundle
(2-4) may be trained, and each site checks that its copy has the digest the job was made with.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

SHIPPED_FILE = Path(__file__).with_name("shipped_bundles.json")
# the config ids analysis instantiates (shapeqc.bundle.loading.load_bundle); everything they reference is checked
ANALYSIS_IDS = ("network_def", "to_grid", "inferer", "to_source")
# what an unvouched bundle's analysis parts may build: exactly the components the shipped bundles' analysis uses
ALLOWED_TARGETS = frozenset({
    "shapeqc.prior.ifnet.IFNet",
    "shapeqc.transforms.LoadOrganMaskd",
    "shapeqc.transforms.CheckOrganMaskd",
    "shapeqc.transforms.ToCanonicalGridd",
    "shapeqc.transforms.PackGridd",
    "shapeqc.transforms.UnpackGridd",
    "shapeqc.transforms.CanonicalGridToSourced",
    "shapeqc.prior.reconstruction.CoarseToFineInferer",
    "monai.transforms.post.dictionary.Activationsd",
})
# import statements anywhere in a checked config may import modules of these packages only (importing runs the
# module's own code, so the packages must be installed ones this project trusts)
ALLOWED_IMPORT_ROOTS = frozenset({"monai", "torch", "numpy", "shapeqc"})
# keys a component may carry besides its arguments; _mode_ and _requires_ run code of their own
ALLOWED_SPECIAL_KEYS = frozenset({"_target_", "_disabled_", "_desc_"})


class BundleTrustError(RuntimeError):
    """A bundle is not trusted and its configs would run more than analysis needs (or its digest differs from
    the one expected); it is used only after the user vouches for it (``shapeqc trust`` / ``--trust-bundle``)."""


@dataclass(frozen=True)
class TrustDecision:
    """Why a bundle may run: ``basis`` is ``shipped``, ``trust store``, ``--trust-bundle``, ``checked`` (its
    analysis parts passed :func:`analysis_config_problems`) or ``expected digest`` (a cohort worker's copy equals
    the client's, which was decided on one of the others); ``digest`` is its :func:`bundle_digest`."""

    digest: str
    basis: str


def bundle_files(bundle_dir: str | os.PathLike) -> list[Path]:
    """Every file under ``bundle_dir`` (symbolic links to files included), sorted by relative path."""
    bundle_dir = Path(bundle_dir)
    found = []
    for folder, folders, files in os.walk(bundle_dir, followlinks=False):
        folders.sort()
        found += [Path(folder) / name for name in files]
        # a linked folder is not walked into: its name and target are hashed instead (bundle_digest)
        found += [Path(folder) / name for name in folders if (Path(folder) / name).is_symlink()]
    return sorted(found, key=lambda p: p.relative_to(bundle_dir).as_posix())


def bundle_digest(bundle_dir: str | os.PathLike) -> str:
    """sha256 (hex) over every file of the bundle folder: each relative path, then its bytes (a link to a folder:
    its target). Two folders with equal digests hold the same files with the same contents."""
    bundle_dir = Path(bundle_dir)
    if not bundle_dir.is_dir():
        raise BundleTrustError(f"{bundle_dir}: not a bundle folder")
    digest = hashlib.sha256()
    for path in bundle_files(bundle_dir):
        digest.update(path.relative_to(bundle_dir).as_posix().encode() + b"\0")
        if path.is_dir():
            digest.update(b"link to folder\0" + os.readlink(path).encode())
        else:
            digest.update(path.read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()


def shipped_digests() -> dict[str, dict]:
    """{digest: {"name", "version"}} of the bundles shipped with this package."""
    if not SHIPPED_FILE.exists():
        return {}
    return {entry["sha256"]: entry for entry in json.loads(SHIPPED_FILE.read_text())["bundles"]}


def write_shipped(bundles_dir: str | os.PathLike) -> Path:
    """Record the digests of every bundle under ``bundles_dir`` as shipped (run after changing a shipped bundle;
    a test checks the record matches the repository's bundles)."""
    entries = []
    for metadata in sorted(Path(bundles_dir).glob("*/configs/metadata.json")):
        folder = metadata.parent.parent
        entries.append({"name": folder.name, "version": json.loads(metadata.read_text()).get("version"),
                        "sha256": bundle_digest(folder)})
    SHIPPED_FILE.write_text(json.dumps({"bundles": entries}, indent=1) + "\n")
    return SHIPPED_FILE


def _config_nodes(node, where: str = ""):
    """Every node of a config tree (dicts, lists, scalars), each with its id (``a#b#0``), parents first."""
    yield where, node
    children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in children:
        yield from _config_nodes(value, f"{where}#{key}" if where else str(key))


def trust_store_path() -> Path:
    """The user's trust store: ``$SHAPEQC_TRUST_STORE``, else ``$XDG_CONFIG_HOME/shapeqc/trusted_bundles.json``
    (``~/.config`` without it)."""
    if os.environ.get("SHAPEQC_TRUST_STORE"):
        return Path(os.environ["SHAPEQC_TRUST_STORE"])
    config_home = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return config_home / "shapeqc" / "trusted_bundles.json"


def trusted_digests() -> dict[str, dict]:
    """{digest: entry} of the user's trust store (empty when there is none)."""
    path = trust_store_path()
    if not path.exists():
        return {}
    try:
        entries = json.loads(path.read_text())["bundles"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise BundleTrustError(f"{path}: the trust store cannot be read ({error}); fix or remove it") from None
    return {entry["sha256"]: entry for entry in entries}


def _config_files(bundle_dir: Path) -> list[Path]:
    return sorted(p for p in (bundle_dir / "configs").glob("*") if p.suffix in (".json", ".yaml", ".yml"))


def what_it_runs(bundle_dir: str | os.PathLike) -> list[str]:
    """What the bundle's configs would run, one line each (``file: id: _target_ X`` / ``$ expression``), and
    the code files in the folder: what a person should read before vouching for the bundle. Reads the files as
    data (YAML safe loader, JSON); runs nothing."""
    import yaml

    bundle_dir = Path(bundle_dir)
    lines = []
    for path in _config_files(bundle_dir):
        try:
            content = json.loads(path.read_text()) if path.suffix == ".json" else yaml.safe_load(path.read_text())
        except (OSError, ValueError, yaml.YAMLError) as error:
            lines.append(f"{path.name}: unreadable ({error})")
            continue
        for where, node in _config_nodes(content):
            if isinstance(node, dict):
                lines += [f"{path.name}: {where}: builds {node[key]}" if key == "_target_" else
                          f"{path.name}: {where}: {key} {node[key]!r}"
                          for key in ("_target_", "_mode_", "_requires_") if key in node]
            elif isinstance(node, str) and node.startswith(("$", "%")) and not where.endswith("#_target_"):
                lines.append(f"{path.name}: {where}: {'runs' if node.startswith('$') else 'copies'} {node}")
    code = [p.relative_to(bundle_dir).as_posix() for p in bundle_files(bundle_dir)
            if p.suffix in (".py", ".so", ".pyc", ".pth", ".sh")]
    lines += [f"code file: {name}" for name in code]
    return lines


def trust_bundle(bundle_dir: str | os.PathLike, note: str = "") -> dict:
    """Record the bundle's digest in the user's trust store (the decision ``shapeqc trust BUNDLE`` makes) with
    its folder, name, version, time and what its configs run; returns the entry. The file is replaced atomically."""
    bundle_dir = Path(bundle_dir).resolve()
    digest = bundle_digest(bundle_dir)
    metadata_path = bundle_dir / "configs" / "metadata.json"
    try:
        version = json.loads(metadata_path.read_text()).get("version")
    except (OSError, ValueError):
        version = None
    entry = {"sha256": digest, "path": str(bundle_dir), "name": bundle_dir.name, "version": version,
             "trusted_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "note": note, "runs": what_it_runs(bundle_dir)}
    path = trust_store_path()
    entries = [e for e in trusted_digests().values() if e["sha256"] != digest] + [entry]
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(json.dumps({"bundles": entries}, indent=1) + "\n")
    os.replace(partial, path)
    return entry


def _import_problem(expression: str) -> str | None:
    """Why the ``$`` import statement ``expression`` is not allowed, None when it is (one statement importing
    modules of :data:`ALLOWED_IMPORT_ROOTS`, no relative import)."""
    try:
        body = ast.parse(expression[1:]).body
    except SyntaxError:
        return "not a valid statement"
    if len(body) != 1 or not isinstance(body[0], (ast.Import, ast.ImportFrom)):
        return "an import statement followed by more code"
    node = body[0]
    modules = [alias.name for alias in node.names] if isinstance(node, ast.Import) else [node.module or ""]
    if isinstance(node, ast.ImportFrom) and node.level:
        return "a relative import"
    outside = [m for m in modules if m.split(".")[0] not in ALLOWED_IMPORT_ROOTS]
    return f"imports {', '.join(outside)}" if outside else None


def _is_import_statement(text: str) -> bool:
    """What MONAI evaluates as an import whenever any item is resolved (``ConfigExpression.is_import_statement``)."""
    from monai.bundle.config_item import ConfigExpression

    try:
        return ConfigExpression.is_import_statement(text)
    except SyntaxError:
        return False


def analysis_config_problems(parser, ids=ANALYSIS_IDS) -> list[str]:
    """What the parsed bundle config (a ``monai.bundle.ConfigParser`` with its files and ``_meta_`` read, whose
    macros and relative ids :func:`checked_parser` has expanded) would run in analysis beyond the allow-list:
    one ``id: reason`` string each (empty: nothing).

    Walks ``ids`` and every item they reference with ``@``; and the whole config for import statements and for
    macros left unexpanded (a macro inside a macro's content is expanded by the next parse, after this check).
    """
    from monai.bundle.config_item import ComponentLocator, ConfigComponent
    from monai.bundle.reference_resolver import ReferenceResolver

    locator = ComponentLocator()
    config = parser.get()
    problems: list[str] = []

    for where, node in _config_nodes(config):
        if isinstance(node, str) and node.startswith("%"):
            problems.append(f"{where}: macro {node!r} left after expansion (a macro inside a macro)")
        elif isinstance(node, str) and node.startswith("$") and _is_import_statement(node):
            problem = _import_problem(node)
            if problem:
                problems.append(f"{where}: {node!r} {problem} (MONAI runs every import statement of a config)")

    def lookup(item_id: str):
        try:  # MONAI's own navigation of an id, as the resolver will do it
            return parser[item_id], True
        except (KeyError, IndexError, ValueError, TypeError):
            return None, False

    pending, seen = [ReferenceResolver.normalize_id(i) for i in ids], set()

    def visit(root, root_id: str):
        for where, node in _config_nodes(root, root_id):
            if where.endswith("#_target_"):  # judged with its component below
                continue
            if isinstance(node, dict):
                if "_target_" in node:
                    target = node["_target_"]
                    if not isinstance(target, str) or target.startswith(("@", "$", "%")):
                        problems.append(f"{where}: _target_ {target!r} is computed")
                    else:
                        name = ConfigComponent(config=node, locator=locator).resolve_module_name()
                        if name not in ALLOWED_TARGETS:
                            problems.append(f"{where}: _target_ {target!r} ({name}) is not one of the components "
                                            "analysis uses")
                for key in node:
                    if isinstance(key, str) and key.startswith("_") and key.endswith("_") and len(key) > 2 \
                            and key not in ALLOWED_SPECIAL_KEYS:
                        problems.append(f"{where}: {key} is not allowed (_mode_ and _requires_ run code of their own)")
                    if not isinstance(key, str) or key.startswith("+") or "#" in key or "::" in key:
                        problems.append(f"{where}: key {key!r} is merged or nested into other items by MONAI")
            elif isinstance(node, str):
                if node.startswith("$"):
                    problems.append(f"{where}: expression {node!r}")
                elif node.startswith("%"):
                    problems.append(f"{where}: macro {node!r}")
                elif node.startswith("@"):
                    if ReferenceResolver.id_matcher.fullmatch(ReferenceResolver.normalize_id(node)) is None:
                        problems.append(f"{where}: reference {node!r} is not a plain id")
                    else:
                        pending.append(ReferenceResolver.normalize_id(node[1:]))
            elif node is not None and not isinstance(node, (bool, int, float, list)):
                problems.append(f"{where}: value of type {type(node).__name__}")

    while pending:
        item_id = pending.pop(0)
        if item_id in seen:
            continue
        seen.add(item_id)
        node, found = lookup(item_id)
        if not found:
            problems.append(f"{item_id}: referenced but not in the config")
            continue
        visit(node, item_id.replace("::", "#"))
    return problems


def checked_parser(parser, source: str | os.PathLike):
    """``parser`` (a ConfigParser with the bundle's files and ``_meta_`` read) with its macros and relative ids
    expanded in place, as MONAI's parse does, after :func:`analysis_config_problems` found nothing; otherwise
    BundleTrustError naming ``source`` and every problem. Nothing of the config has run either way."""
    try:
        parser.resolve_macro_and_relative_ids()
    except Exception as error:  # a macro naming a missing file or id: the config cannot be what runs
        raise BundleTrustError(f"{source}: its macros or relative ids do not resolve ({type(error).__name__}: "
                               f"{error})") from None
    problems = analysis_config_problems(parser)
    if problems:
        shown = "; ".join(problems[:6]) + (f" (and {len(problems) - 6} more)" if len(problems) > 6 else "")
        raise BundleTrustError(f"{source}: untrusted bundle whose analysis config would run more than shapeqc's "
                               f"analysis components: {shown}. A bundle is code: read what it runs (shapeqc trust "
                               "--show BUNDLE), then trust it with `shapeqc trust BUNDLE` or --trust-bundle")
    return parser


def _vouched(bundle_dir: Path, trusted) -> bool:
    return any(bundle_dir.resolve() == Path(path).resolve() for path in trusted)


def decide_trust(bundle_dir: str | os.PathLike, trusted=(), expected_digest: str | None = None,
                 announce=None) -> TrustDecision:
    """The trust decision for ``bundle_dir`` from its digest alone (computed first; no config is read):
    ``shipped``, ``trust store``, ``--trust-bundle`` (``bundle_dir`` among ``trusted``; ``announce`` gets what its
    configs would run, stderr by default) or ``unvouched`` (to be checked with :func:`checked_parser`).
    ``expected_digest``: the digest another process decided on; a copy with any other digest is refused."""
    bundle_dir = Path(bundle_dir)
    digest = bundle_digest(bundle_dir)
    if expected_digest is not None and digest != expected_digest:
        raise BundleTrustError(f"{bundle_dir}: this copy of the bundle differs from the one the run was started "
                               f"with (sha256 {digest} vs {expected_digest}); nothing of it was read")
    if digest in shipped_digests():
        return TrustDecision(digest, "shipped")
    if digest in trusted_digests():
        return TrustDecision(digest, "trust store")
    if _vouched(bundle_dir, trusted):
        announce = announce or (lambda text: print(text, file=sys.stderr))
        announce(f"shapeqc: running {bundle_dir} (sha256 {digest}) on your word (--trust-bundle); its configs run:\n"
                 + "\n".join(f"  {line}" for line in what_it_runs(bundle_dir)))
        return TrustDecision(digest, "--trust-bundle")
    return TrustDecision(digest, "unvouched")


def require_trusted(bundle_dir: str | os.PathLike, trusted=(), purpose: str = "training") -> TrustDecision:
    """The decision for a run of the bundle's whole configs (``purpose``: training, a federated job), which only a
    vouched-for bundle may get: BundleTrustError for an unvouched one."""
    decision = decide_trust(bundle_dir, trusted)
    if decision.basis == "unvouched":
        raise BundleTrustError(f"{bundle_dir}: {purpose} runs the bundle's training configs, which are code, and "
                               f"this bundle (sha256 {decision.digest}) is neither shipped with shapeqc nor trusted; "
                               "read what it runs (shapeqc trust --show BUNDLE), then `shapeqc trust BUNDLE` or "
                               "--trust-bundle")
    return decision


def main(argv: list[str] | None = None) -> int:
    """``python -m shapeqc.bundle.trust --write-shipped BUNDLES_DIR``: record the shipped bundles' digests."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--write-shipped", required=True, metavar="BUNDLES_DIR")
    args = parser.parse_args(argv)
    print(write_shipped(args.write_shipped))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
