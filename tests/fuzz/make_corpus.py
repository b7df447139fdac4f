#!/usr/bin/env python3
"""Regenerates the seed corpus of tests/fuzz/fuzz_safetensors.c in
tests/fuzz/corpus/safetensors/: small valid safetensors files of each dtype and
malformed ones for every check the parser makes. Crash inputs found by the
fuzzer are added to the same folder by hand (named crash-*), never by this
script.

Usage: python3 tests/fuzz/make_corpus.py
"""
import json
import os
import struct

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus", "safetensors")


def raw(header: bytes, data: bytes = b"", length=None) -> bytes:
    n = len(header) if length is None else length
    return struct.pack("<Q", n) + header + data


def st(tensors, data: bytes, meta=None, pad=True) -> bytes:
    h = {}
    if meta is not None:
        h["__metadata__"] = meta
    h.update(tensors)
    hb = json.dumps(h, separators=(",", ":")).encode()
    if pad:
        hb += b" " * (-len(hb) % 8)
    return raw(hb, data)


def t(dtype, shape, begin, end):
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


SEEDS = {
    "valid_f32": st({"w": t("F32", [2, 2], 0, 16)}, bytes(range(16))),
    "valid_mixed": st({"a.f16": t("F16", [3], 0, 6), "b.bf16": t("BF16", [1, 2, 1], 6, 10),
                       "c.scalar": t("F32", [], 10, 14), "d.empty": t("BF16", [0, 5], 14, 14)},
                      bytes(range(14)), meta={"format": "pt"}),
    "valid_unpadded": st({"x": t("BF16", [4], 0, 8)}, b"\x80\x3f" * 4, pad=False),
    "valid_out_of_order": st({"z": t("F32", [1], 4, 8), "y": t("F32", [1], 0, 4)}, bytes(8)),
    "empty_header": raw(b"{}"),
    "empty_padded": raw(b"{}      "),
    "length_past_end": raw(b"{}", length=1000),
    "length_huge": raw(b"{}", length=(1 << 64) - 1),
    "short": b"\x02\x00\x00",
    "not_json": raw(b"{\"a\": [1, 2"),
    "not_object": raw(b"[1,2,3]"),
    "reversed": st({"w": t("F32", [1], 4, 0)}, bytes(4)),
    "past_end": st({"w": t("F32", [4], 0, 16)}, bytes(8)),
    "overlap": st({"a": t("F32", [2], 0, 8), "b": t("F32", [2], 4, 12)}, bytes(12)),
    "gap": st({"a": t("F32", [1], 0, 4), "b": t("F32", [1], 8, 12)}, bytes(12)),
    "trailing": st({"a": t("F32", [1], 0, 4)}, bytes(9)),
    "span_mismatch": st({"a": t("F32", [2, 3], 0, 20)}, bytes(20)),
    "overflow_shape": st({"a": t("F32", [1 << 62, 1 << 62], 0, 4)}, bytes(4)),
    "overflow_dtype": st({"a": t("F32", [(1 << 63) - 1], 0, 4)}, bytes(4)),
    "zero_dim_overflow": st({"a": t("F32", [1 << 62, 1 << 62, 0], 0, 0)}, b""),
    "unknown_dtype": st({"a": t("F99", [1], 0, 4)}, bytes(4)),
    "i64_dtype": st({"a": t("I64", [1], 0, 8)}, bytes(8)),
    "nine_dims": st({"a": t("F32", [1] * 9, 0, 4)}, bytes(4)),
    "negative": st({"a": t("F32", [-1], 0, 4)}, bytes(4)),
    "duplicate": raw(b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},'
                     b'"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}', bytes(8)),
    "missing_fields": raw(b'{"a":{"dtype":"F32"}}'),
    "meta_not_string": st({}, b"", meta={"k": 1}),
    "deep_nesting": raw(b'{"a":' + b"[" * 3000 + b"]" * 3000 + b"}"),
    "bad_utf8": raw(b'{"\xc3\x28":{}}'),
    "nul_escape": raw(b'{"a\\u0000":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}', bytes(4)),
    "big_int": raw(b'{"a":{"dtype":"F32","shape":[99999999999999999999],"data_offsets":[0,4]}}', bytes(4)),
    "index_valid": raw(b'{"metadata":{"total_size":4},"weight_map":{"a":"model-00001-of-00002.safetensors",'
                       b'"b":"model-00002-of-00002.safetensors"}}'),
    "config_llama3": raw(json.dumps({
        "architectures": ["LlamaForCausalLM"], "vocab_size": 512, "hidden_size": 64,
        "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "eos_token_id": [1, 2], "rope_theta": 500000.0,
        "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}}).encode()),
    "index_traversal": raw(b'{"weight_map":{"a":"../../etc/passwd"}}'),
}


def main():
    os.makedirs(OUT, exist_ok=True)
    for name, data in SEEDS.items():
        with open(os.path.join(OUT, name), "wb") as f:
            f.write(data)
    print("wrote %d seeds to %s" % (len(SEEDS), OUT))


if __name__ == "__main__":
    main()
