"""sdrt.hashing: the one chunked file-sha256 loop, and the hashes built on it."""

from __future__ import annotations

import hashlib
import json

from sdrt import hashing


def test_file_sha256_reads_in_chunks_from_an_offset(tmp_path, monkeypatch):
    path = tmp_path / "f.bin"
    path.write_bytes(b"0123456789" * 5)
    monkeypatch.setattr(hashing, "CHUNK", 7)  # several chunks, the last one short
    assert hashing.file_sha256(path) == hashlib.sha256(b"0123456789" * 5).hexdigest()
    assert hashing.file_sha256(path, start=12) == hashlib.sha256((b"0123456789" * 5)[12:]).hexdigest()


def test_files_sha256_in_order_with_absent_files_skipped(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(b"graph")
    b.write_bytes(b"weights")
    assert hashing.files_sha256([a, b]) == hashlib.sha256(b"graphweights").hexdigest()
    assert hashing.files_sha256([b, a]) != hashing.files_sha256([a, b])
    assert hashing.files_sha256([a, tmp_path / "missing"]) == hashlib.sha256(b"graph").hexdigest()


def test_update_with_file_feeds_a_running_hash(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"body")
    digest = hashlib.sha256(b"name\0")
    assert hashing.update_with_file(digest, path) is digest
    assert digest.hexdigest() == hashlib.sha256(b"name\0body").hexdigest()


def test_the_callers_hash_what_they_did_before(tmp_path):
    """component sha256 (graph, then .data), a folder's content hash, A1111's LoRA short hash."""
    from sdrt.export.source import hash_folder
    from sdrt.manifest_schema import component_files, component_sha256
    from sdrt.runtime.lora.files import _short_hash

    onnx = tmp_path / "unet" / "model.onnx"
    onnx.parent.mkdir()
    onnx.write_bytes(b"graph")
    (tmp_path / "unet" / "model.onnx.data").write_bytes(b"weights")
    assert component_sha256(component_files(onnx)) == hashlib.sha256(b"graphweights").hexdigest()
    expected = hashlib.sha256(b"unet/model.onnx\0graph" + b"unet/model.onnx.data\0weights").hexdigest()
    assert hash_folder(tmp_path) == "sha256:" + expected

    header = json.dumps({"__metadata__": {}}).encode()
    lora = tmp_path / "l.safetensors"
    lora.write_bytes(len(header).to_bytes(8, "little") + header + b"tensor bytes")
    assert _short_hash(lora) == hashlib.sha256(b"tensor bytes").hexdigest()[:12]
