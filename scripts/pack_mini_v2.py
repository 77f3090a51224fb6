#!/usr/bin/env python
"""Pack vlkit-mini v2's training data into one folder that a machine without the registries can train from.

The GPU machine this project is sometimes lent (see ``scripts/device/train_mini_v2.sh``)
reaches no package registry, and what travels to it is at most 64 MiB. The corpus as
built (``scripts/build_mini_corpus.py``: 281k icons, 1.15 GB of 32 px RGBA) and the emoji
(from npm packages) cannot be rebuilt there, so this script packs what
``train_vlkit_mini_v2.load_sources`` returns, and the validation splits the Validator
scores, into xz-compressed pieces (under 50 MB in all):

- ``images-K.xz``: the (N, 4, S, S) uint8 training images, in ``--chunks`` raw pieces,
  decompressed in parallel on the other side;
- ``meta.pt.xz``: everything else the training loop reads (concept of each image, source,
  captions per concept, emoji subcategories and categories, the data summary);
- ``val.pt.xz``: per val split, the preprocessed images, labels and class captions;
- ``banks.pt.xz``: the text side, embedded here by the frozen MiniLM tower (whose 88 MB
  package cannot travel): the concept prototypes in int8 with a scale per row (their
  cosine to the float32 rows is above 0.9999; renormalised on unpacking), the emoji
  subcategory/category banks and the val splits' class weights in float32;
- ``manifest.json``: format version, array shape, the sha256 of every piece, the corpus's
  own manifest (package versions, licences) as the summary records it.

    python scripts/pack_mini_v2.py --out .carry/mini-v2        # ~4 min on 2 cores
    python scripts/train_vlkit_mini_v2.py --packed .carry/mini-v2 --out runs/mini-v2 --steps 10
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import lzma
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from vlkit.errors import VlkitError  # noqa: E402
from vlkit.io import atomic_file, atomic_write_text  # noqa: E402

PACK_VERSION = 1
DROPPED = ("images", "folder", "table")  # the images travel apart; the rest is not read by the training loop


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write(path: Path, data: bytes) -> str:
    with atomic_file(path) as tmp:
        Path(tmp).write_bytes(data)
    return _digest(data)


def _xz(obj: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return lzma.compress(buffer.getvalue(), preset=9)


BANK_BITS = 6  # per value of the concept bank: 4 values in 3 bytes


def quantise_rows(bank: torch.Tensor, bits: int = BANK_BITS) -> dict[str, torch.Tensor]:
    """(K, D) float rows -> codes in [-L, L] with L = 2**(bits-1) - 1, bit-packed, and a scale per row (max |value| / L)."""
    levels = 2 ** (bits - 1) - 1
    scale = bank.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / levels  # (K, 1)
    codes = (torch.round(bank / scale) + levels).to(torch.int64).numpy()  # (K, D) in [0, 2L]
    return {"packed": torch.from_numpy(_pack_bits(codes, bits)), "scale": scale.float(),
            "shape": torch.tensor(bank.shape), "bits": torch.tensor(bits)}


def dequantise_rows(packed: dict[str, torch.Tensor]) -> torch.Tensor:
    """The inverse of :func:`quantise_rows`, renormalised to unit rows: (K, D) float32."""
    bits, shape = int(packed["bits"]), tuple(int(n) for n in packed["shape"])
    codes = _unpack_bits(packed["packed"].numpy(), bits, shape[0] * shape[1]).reshape(shape)
    values = (torch.from_numpy(codes).float() - (2 ** (bits - 1) - 1)) * packed["scale"]
    return torch.nn.functional.normalize(values, dim=-1)


def _pack_bits(codes: np.ndarray, bits: int) -> np.ndarray:
    """Unsigned ``bits``-bit codes (any shape) -> a uint8 stream (little-endian bit order)."""
    flat = codes.reshape(-1).astype(np.uint32)
    step = 1 << 20  # values per piece: a multiple of 8, so every piece ends on a byte
    shifts = np.arange(bits, dtype=np.uint32)
    return np.concatenate([np.packbits(((flat[i:i + step, None] >> shifts) & 1).astype(np.uint8).reshape(-1),
                                       bitorder="little") for i in range(0, len(flat), step)])


def _unpack_bits(stream: np.ndarray, bits: int, count: int) -> np.ndarray:
    as_bits = np.unpackbits(stream, bitorder="little")[:count * bits].reshape(count, bits).astype(np.int64)
    return (as_bits << np.arange(bits)).sum(axis=1)


def pack(out: Path, data: dict, val_sets: dict, banks: dict[str, torch.Tensor], chunks: int = 8,
         workers: int = 2) -> dict:
    """Write ``data`` (as ``load_sources`` returns it), ``val_sets`` and the text ``banks`` into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    images = np.ascontiguousarray(data["images"].numpy())  # (N, 4, S, S) uint8
    bounds = np.linspace(0, len(images), chunks + 1).astype(int)
    pieces = [images[a:b].tobytes() for a, b in zip(bounds[:-1], bounds[1:])]
    with ThreadPoolExecutor(workers) as pool:  # lzma releases the GIL
        packed = list(pool.map(lambda raw: lzma.compress(raw, preset=9 | lzma.PRESET_EXTREME), pieces))
    files = {f"images-{k}.xz": _write(out / f"images-{k}.xz", blob) for k, blob in enumerate(packed)}
    meta = {k: v for k, v in data.items() if k not in DROPPED}
    files["meta.pt.xz"] = _write(out / "meta.pt.xz", _xz(meta))
    files["val.pt.xz"] = _write(out / "val.pt.xz", _xz(val_sets))
    small = {k: v.float().cpu() for k, v in banks.items() if k != "concepts"}
    files["banks.pt.xz"] = _write(out / "banks.pt.xz", _xz(small | {"concepts": quantise_rows(banks["concepts"].cpu())}))
    manifest = {"version": PACK_VERSION, "shape": list(images.shape), "dtype": "uint8",
                "bounds": bounds.tolist(), "files": files, "summary": data["summary"],
                "bytes": sum((out / name).stat().st_size for name in files)}
    atomic_write_text(out / "manifest.json", json.dumps(manifest, indent=1) + "\n")
    return manifest


def _read(folder: Path, name: str, digest: str) -> bytes:
    blob = (folder / name).read_bytes()
    if _digest(blob) != digest:
        raise VlkitError(f"{folder / name} does not match its manifest (a partial copy?); "
                         f"pack again with scripts/pack_mini_v2.py")
    return blob


def _load_xz(folder: Path, name: str, manifest: dict) -> object:
    blob = lzma.decompress(_read(folder, name, manifest["files"][name]))
    return torch.load(io.BytesIO(blob), weights_only=False)


def unpack(folder: Path, workers: int = 8) -> tuple[dict, dict, dict[str, torch.Tensor]]:
    """The ``load_sources``-shaped data dict, the validation sets and the text banks, from a packed folder."""
    folder = Path(folder)
    manifest_path = folder / "manifest.json"
    if not manifest_path.is_file():
        raise VlkitError(f"{folder} holds no manifest.json: write it with scripts/pack_mini_v2.py --out {folder}")
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("version") != PACK_VERSION:
        raise VlkitError(f"{folder} is pack version {manifest.get('version')}, this script reads {PACK_VERSION}")
    names = sorted((n for n in manifest["files"] if n.startswith("images-")), key=lambda n: int(n[7:-3]))

    def piece(name: str) -> bytes:
        return lzma.decompress(_read(folder, name, manifest["files"][name]))

    with ThreadPoolExecutor(workers) as pool:
        raw = b"".join(pool.map(piece, names))
    images = np.frombuffer(bytearray(raw), dtype=np.uint8).reshape(manifest["shape"])
    data, val_sets, banks = (_load_xz(folder, name, manifest) for name in ("meta.pt.xz", "val.pt.xz", "banks.pt.xz"))
    data["images"] = torch.from_numpy(images)
    return data, val_sets, banks | {"concepts": dequantise_rows(banks["concepts"])}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="folder to write (e.g. .carry/mini-v2, git-ignored)")
    ap.add_argument("--size", type=int, default=None, help="image size (default: vlkit-mini's)")
    ap.add_argument("--chunks", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args(argv)
    import train_vlkit_mini_v2 as v2
    from vlkit.backbones import mini

    data, val_sets = v2.load_sources(args.size or mini.MINI_IMAGE_SIZE), v2.validation_sets()
    with torch.no_grad():
        banks = v2.text_banks(mini.load_run(mini.WEIGHTS_DIR), mini.mini_tokenizer(), data, val_sets)
    manifest = pack(args.out, data, val_sets, banks, args.chunks, args.workers)
    print(json.dumps({k: manifest[k] for k in ("shape", "bytes")}))
    return manifest


if __name__ == "__main__":
    main()
