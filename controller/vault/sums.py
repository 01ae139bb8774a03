"""SHA256SUMS: a point's metadata digest, covering ``manifest.json`` and ``domain.xml``.

The file sits next to them in the point directory, in ``sha256sum`` format, so ``cd POINT && sha256sum -c
SHA256SUMS`` checks it by hand::

    <sha256 hex>  domain.xml
    <sha256 hex>  manifest.json

The stored disks are covered through the manifest (each disk record carries its content digest), so the chain is
SHA256SUMS -> manifest.json -> disks. It detects corruption and hand edits; it is not a signature (whoever can
write the vault can rewrite it).

Publish writes it inside the ``.tmp-<id>`` directory after the manifest, so it appears with the point.
Rewriting a published manifest (``Vault.update_manifest``: boot-check and verify results) cannot rename two files
at once, so :func:`rewrite_manifest` takes three durable steps: (1) SHA256SUMS lists the current AND the new
manifest digest, (2) manifest.json is replaced, (3) SHA256SUMS lists only the new one. A crash between any two
steps leaves a manifest whose digest is listed, and :func:`check` accepts a manifest matching any listed
``manifest.json`` line (there are two only between steps 1 and 3; ``sha256sum -c`` then reports one of them
FAILED). A rewrite first checks the current metadata and refuses with METADATA_MISMATCH when it does not match,
so a tampered file is never sealed.

Points of manifest format 1 and 2 (before this file existed) have no SHA256SUMS: :func:`check` gives the warning
"no metadata digest (older point)", not an error; rewriting such a manifest writes one. A format 3 manifest
without SHA256SUMS is an error (deleting the file does not downgrade the check).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from controller.locks import flocked
from controller.vault import layout
from controller.vault.exceptions import MetadataMismatch
from controller.vault.manifest import Manifest, manifest_bytes, write_file_durable

#: manifest format from which every point has a SHA256SUMS
SEALED_FROM_VERSION = 3
NO_DIGEST_WARNING = "no metadata digest (older point)"
_LINE = re.compile(r"^([0-9a-f]{64})  (manifest\.json|domain\.xml)$")


@dataclass
class MetaCheck:
    """Outcome of :func:`check`: errors as "<file>: <what>", warnings as text."""

    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def sha256_of(data: bytes) -> str:
    """Hex SHA-256 of a small file's bytes."""
    return hashlib.sha256(data).hexdigest()


def render(domain_xml: str, manifests: list[str]) -> bytes:
    """SHA256SUMS content: domain.xml first, then one line per accepted manifest digest."""
    lines = [f"{domain_xml}  {layout.DOMAIN_XML}"] + [f"{h}  {layout.MANIFEST}" for h in manifests]
    return ("\n".join(lines) + "\n").encode()


def parse(pdir: Path) -> dict[str, list[str]]:
    """{file name: [hex digests]} from pdir/SHA256SUMS; MetadataMismatch if a line is malformed."""
    text = (pdir / layout.SUMS).read_text(encoding="ascii", errors="replace")
    out: dict[str, list[str]] = {}
    for n, line in enumerate(text.splitlines(), 1):
        m = _LINE.fullmatch(line)
        if m is None:
            raise MetadataMismatch(f"{layout.SUMS} line {n} is not '<sha256>  manifest.json|domain.xml'")
        out.setdefault(m.group(2), []).append(m.group(1))
    return out


def _read(path: Path) -> bytes | None:
    """A file's bytes, None if it cannot be read."""
    try:
        return path.read_bytes()
    except OSError:
        return None


def _format_version(manifest: bytes | None) -> object:
    """format_version as written in the raw manifest (None if unreadable)."""
    try:
        data = json.loads(manifest or b"")
    except ValueError:
        return None
    return data.get("format_version") if isinstance(data, dict) else None


def check(pdir: Path) -> MetaCheck:
    """Compare manifest.json and domain.xml with SHA256SUMS; every problem names its file."""
    res = MetaCheck()
    manifest = _read(pdir / layout.MANIFEST)
    if not (pdir / layout.SUMS).exists():
        version = _format_version(manifest)
        if isinstance(version, int) and version >= SEALED_FROM_VERSION:
            res.errors.append(f"{layout.SUMS}: missing (manifest format {version} is always written with it)")
        else:
            res.warnings.append(NO_DIGEST_WARNING)
        return res
    try:
        sums = parse(pdir)
    except (MetadataMismatch, OSError) as e:
        res.errors.append(f"{layout.SUMS}: unreadable: {e}")
        return res
    for name, blob in ((layout.MANIFEST, manifest), (layout.DOMAIN_XML, _read(pdir / layout.DOMAIN_XML))):
        listed = sums.get(name, [])
        if not listed:
            res.errors.append(f"{name}: not listed in {layout.SUMS}")
        elif blob is None:
            res.errors.append(f"{name}: missing or unreadable (listed in {layout.SUMS})")
        elif sha256_of(blob) not in listed:
            res.errors.append(f"{name}: sha256 {sha256_of(blob)} does not match {layout.SUMS} (changed after backup)")
    return res


def seal(pdir: Path) -> None:
    """Write pdir/SHA256SUMS for the manifest.json and domain.xml now in pdir (publish, inside .tmp-<id>)."""
    xml = sha256_of((pdir / layout.DOMAIN_XML).read_bytes())
    write_file_durable(pdir / layout.SUMS, render(xml, [sha256_of((pdir / layout.MANIFEST).read_bytes())]))


@contextlib.contextmanager
def point_lock(pdir: Path) -> Iterator[None]:
    """flock on the point directory: one manifest rewrite at a time per point, across processes."""
    with flocked(pdir, directory=True):
        yield


def rewrite_manifest(pdir: Path, m: Manifest) -> None:
    """Replace a published point's manifest.json and its SHA256SUMS line in three crash-safe steps (see above).

    Raises METADATA_MISMATCH, changing nothing, when the current manifest.json or domain.xml does not match.
    The caller holds point_lock(pdir) from reading the manifest it changes until this returns.
    """
    now = check(pdir)
    if now.errors:
        raise MetadataMismatch(
            f"point {pdir.name}: refusing to rewrite its manifest: {'; '.join(now.errors)}",
            details={"problems": now.errors},
        )
    xml = sha256_of((pdir / layout.DOMAIN_XML).read_bytes())
    old = sha256_of((pdir / layout.MANIFEST).read_bytes())
    data = manifest_bytes(m)
    new = sha256_of(data)
    write_file_durable(pdir / layout.SUMS, render(xml, [old, new] if old != new else [new]))
    write_file_durable(pdir / layout.MANIFEST, data)
    write_file_durable(pdir / layout.SUMS, render(xml, [new]))
