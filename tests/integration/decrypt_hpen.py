"""An independent reader of hosepipe's encrypted objects, written from docs/encryption-format.md
alone (Python + `cryptography`), to check that the document is enough.

    decrypt(blob, unwrap, expected_key=None) -> plaintext
    local_unwrap(keyring_json_path) -> unwrap function for provider "local"
    kms_unwrap(boto3_kms_client) -> unwrap function for provider "aws-kms"
"""
import base64
import hashlib
import json
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM


class HpenError(Exception):
    pass


class _Reader:
    def __init__(self, blob):
        self.blob, self.pos = blob, 0

    def take(self, n):
        if self.pos + n > len(self.blob):
            raise HpenError("truncated header")
        out = self.blob[self.pos:self.pos + n]
        self.pos += n
        return out

    def u8(self):
        return self.take(1)[0]

    def u16(self):
        return struct.unpack(">H", self.take(2))[0]

    def u32(self):
        return struct.unpack(">I", self.take(4))[0]

    def bytes16(self):
        return self.take(self.u16())

    def str16(self):
        return self.bytes16().decode("utf-8")


def _nonce(prefix, n):
    return prefix + struct.pack(">I", n)


def read_header(blob):
    """The header's fields, as a dict (no authentication: for inspection only)."""
    r = _Reader(blob)
    if r.take(4) != b"HPEN" or r.u8() != 1:
        raise HpenError("not an HPEN v1 object")
    provider, key_id, wrapped = r.str16(), r.str16(), r.bytes16()
    context = dict((r.str16(), r.str16()) for _ in range(r.u16()))
    return {"provider": provider, "key_id": key_id, "wrapped_key": wrapped, "context": context}


def decrypt(blob, unwrap, expected_key=None):
    r = _Reader(blob)
    if r.take(4) != b"HPEN":
        raise HpenError("not an HPEN object")
    if r.u8() != 1:
        raise HpenError("unsupported version")
    provider = r.str16()
    key_id = r.str16()
    wrapped = r.bytes16()
    context = [(r.str16(), r.str16()) for _ in range(r.u16())]
    if context != sorted(context):
        raise HpenError("context not sorted")
    frame_size = r.u32()
    if r.u8() != 1:
        raise HpenError("unknown nonce scheme")
    prefix = r.take(8)
    fields = blob[:r.pos]
    tag = r.take(16)
    header = blob[:r.pos]
    ctx = dict(context)
    if expected_key is not None and ctx.get("hosepipe:object-key") != expected_key:
        raise HpenError("header belongs to another object")
    wrap_context = {k: v for k, v in ctx.items() if k == "hosepipe:stream"}
    aes = AESGCM(unwrap(provider, key_id, wrapped, wrap_context))
    try:
        aes.decrypt(_nonce(prefix, 0xFFFFFFFF), tag, fields)
    except InvalidTag:
        raise HpenError("header does not authenticate")
    h = hashlib.sha256(header).digest()
    out, i, pos = [], 0, r.pos
    while True:
        chunk = blob[pos:pos + frame_size + 16]
        if len(chunk) < 16:
            raise HpenError("truncated: no final frame")
        final = len(chunk) < frame_size + 16
        try:
            out.append(aes.decrypt(_nonce(prefix, i), chunk,
                                   h + struct.pack(">I", i) + bytes([int(final)])))
        except InvalidTag:
            raise HpenError(f"frame {i} does not authenticate")
        pos += len(chunk)
        i += 1
        if final:
            if pos != len(blob):
                raise HpenError("data after the final frame")
            return b"".join(out)


def local_unwrap(keyring_path):
    def unwrap(provider, key_id, wrapped, wrap_context):
        assert provider == "local", provider
        keys = json.loads(open(keyring_path).read())["keys"]
        name = key_id
        version = struct.unpack(">I", wrapped[:4])[0]
        material = next(base64.b64decode(v["material"]) for v in keys[name]["versions"]
                        if v["version"] == version)
        aad = b"hosepipe-keyring-v1" + struct.pack(">H", len(name)) + name.encode()
        aad += struct.pack(">I", version)
        for k, v in sorted(wrap_context.items()):
            aad += struct.pack(">H", len(k)) + k.encode() + struct.pack(">H", len(v)) + v.encode()
        return AESGCM(material).decrypt(wrapped[4:16], wrapped[16:], aad)
    return unwrap


def kms_unwrap(kms):
    def unwrap(provider, key_id, wrapped, wrap_context):
        assert provider == "aws-kms", provider
        return kms.decrypt(CiphertextBlob=wrapped, KeyId=key_id,
                           EncryptionContext=wrap_context)["Plaintext"]
    return unwrap
