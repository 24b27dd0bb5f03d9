import os
from dataclasses import replace

import pytest
from eth_account import Account
from eth_account.messages import encode_typed_data

from veriswarm.checks import Expected, check_receipt
from veriswarm.errors import ReceiptError
from veriswarm.frames import sha256
from veriswarm.receipts import RECEIPT_TYPE, Receipt, ReceiptDomain, address_of, context_seed, hex32, next_context

KEY = bytes.fromhex("4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318")
DOMAIN = ReceiptDomain(chain_id=31337, verifying_contract="0x" + "ab" * 20)


def _receipt(**kw: object) -> Receipt:
    base = dict(manifest_hash="0x" + "11" * 32, shard_index=2, session_id="0x" + "22" * 32, step=3, start_pos=10,
                num_tokens=1, input_hash="0x" + "33" * 32, context_hash="0x" + "44" * 32,
                output_hash="0x" + "55" * 32, request_nonce="0x" + "66" * 32, timestamp_ms=1_700_000_000_000)
    base.update(kw)
    return Receipt(**base)  # type: ignore[arg-type]


def test_digest_matches_eth_account_eip712_encoder() -> None:
    r = _receipt()
    fields = [f.split(" ") for f in RECEIPT_TYPE[len("Receipt("):-1].split(",")]
    message = {
        "types": {
            "EIP712Domain": [{"name": "name", "type": "string"}, {"name": "version", "type": "string"},
                             {"name": "chainId", "type": "uint256"}, {"name": "verifyingContract", "type": "address"}],
            "Receipt": [{"name": n, "type": t} for t, n in fields],
        },
        "primaryType": "Receipt",
        "domain": {"name": "veriswarm", "version": "1", "chainId": DOMAIN.chain_id,
                   "verifyingContract": DOMAIN.verifying_contract},
        "message": {"manifestHash": bytes.fromhex("11" * 32), "shardIndex": 2, "sessionId": bytes.fromhex("22" * 32),
                    "step": 3, "startPos": 10, "numTokens": 1, "inputHash": bytes.fromhex("33" * 32),
                    "contextHash": bytes.fromhex("44" * 32), "outputHash": bytes.fromhex("55" * 32),
                    "requestNonce": bytes.fromhex("66" * 32), "timestampMs": 1_700_000_000_000},
    }
    signed = r.signed(KEY, DOMAIN)
    recovered = Account.recover_message(encode_typed_data(full_message=message),
                                        signature=bytes.fromhex(signed.signature[2:]))
    assert recovered == address_of(KEY) == signed.signer(DOMAIN)


def test_signature_binds_every_field_and_the_domain() -> None:
    signed = _receipt().signed(KEY, DOMAIN)
    me = address_of(KEY)
    assert signed.signer(DOMAIN) == me
    for field, value in [("step", 4), ("output_hash", "0x" + "56" * 32), ("shard_index", 1),
                         ("timestamp_ms", 1), ("request_nonce", "0x" + "67" * 32)]:
        assert replace(signed, **{field: value}).signer(DOMAIN) != me
    assert signed.signer(ReceiptDomain(chain_id=1, verifying_contract=DOMAIN.verifying_contract)) != me


def test_malformed_and_malleable_signatures_are_refused() -> None:
    signed = _receipt().signed(KEY, DOMAIN)
    raw = bytes.fromhex(signed.signature[2:])
    n = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
    high_s = raw[:32] + (n - int.from_bytes(raw[32:64], "big")).to_bytes(32, "big") + bytes([raw[64] ^ 1])
    for bad in ["", "0x1234", "0x" + "zz" * 65, "0x" + raw[:64].hex() + "05", "0x" + high_s.hex()]:
        with pytest.raises(ReceiptError):
            replace(signed, signature=bad).signer(DOMAIN)


def test_from_json_validates_fields() -> None:
    good = _receipt().signed(KEY, DOMAIN).to_json()
    assert Receipt.from_json(good).signer(DOMAIN) == address_of(KEY)
    for broken in [{**good, "step": -1}, {**good, "step": 2**32}, {**good, "manifest_hash": "0x12"},
                   {**good, "extra": 1}, {k: v for k, v in good.items() if k != "step"}, {**good, "step": True},
                   {**good, "session_id": "0x" + "AB" * 32}, [1, 2]]:
        with pytest.raises(ReceiptError):
            Receipt.from_json(broken)


def _expected(previous: bytes, nonce: str) -> Expected:
    return Expected(address=address_of(KEY), manifest_hash="0x" + "11" * 32, shard_index=2,
                    session_id="0x" + "22" * 32, step=0, start_pos=0, num_tokens=3, request_nonce=nonce,
                    previous_context=previous)


def test_check_receipt_accepts_the_honest_receipt_and_rejects_tampering() -> None:
    seed = context_seed("0x" + "11" * 32, 2, "0x" + "22" * 32)
    inp, out, nonce = b"input-frame", b"output-frame", hex32(os.urandom(32))
    ctx = next_context(seed, sha256(inp))
    honest = _receipt(step=0, start_pos=0, num_tokens=3, input_hash=hex32(sha256(inp)), context_hash=hex32(ctx),
                      output_hash=hex32(sha256(out)), request_nonce=nonce).signed(KEY, DOMAIN)
    assert check_receipt(honest, _expected(seed, nonce), inp, out, DOMAIN) == ctx
    with pytest.raises(ReceiptError, match="output_hash"):
        check_receipt(honest, _expected(seed, nonce), inp, out + b"!", DOMAIN)  # tampered output
    with pytest.raises(ReceiptError, match="input_hash"):
        check_receipt(honest, _expected(seed, nonce), b"other", out, DOMAIN)
    with pytest.raises(ReceiptError, match="request_nonce"):
        check_receipt(honest, _expected(seed, hex32(os.urandom(32))), inp, out, DOMAIN)  # replayed receipt
    with pytest.raises(ReceiptError, match="context_hash"):
        check_receipt(honest, _expected(b"\0" * 32, nonce), inp, out, DOMAIN)
    forged = replace(honest, signature=_receipt().signed(os.urandom(32), DOMAIN).signature)
    with pytest.raises(ReceiptError):
        check_receipt(forged, _expected(seed, nonce), inp, out, DOMAIN)
    other_key = replace(honest, signature="").signed(os.urandom(32), DOMAIN)
    with pytest.raises(ReceiptError, match="signed by"):
        check_receipt(other_key, _expected(seed, nonce), inp, out, DOMAIN)
    # The signer is compared as 20 bytes: the expected address may come in any case, and a malformed one
    # matches no signer (not even a key whose address would share its valid part).
    for spelling in (address_of(KEY).lower(), "0x" + address_of(KEY)[2:].upper()):
        assert check_receipt(honest, replace(_expected(seed, nonce), address=spelling), inp, out, DOMAIN) == ctx
    for broken in ("", address_of(KEY)[2:], address_of(KEY) + "00", address_of(KEY)[:-2], "0x" + "zz" * 20):
        with pytest.raises(ReceiptError, match="signed by"):
            check_receipt(honest, replace(_expected(seed, nonce), address=broken), inp, out, DOMAIN)


def test_context_chain_depends_on_order_and_session() -> None:
    a, b = sha256(b"a"), sha256(b"b")
    seed = context_seed("0x" + "11" * 32, 0, "0x" + "22" * 32)
    assert next_context(next_context(seed, a), b) != next_context(next_context(seed, b), a)
    assert seed != context_seed("0x" + "11" * 32, 0, "0x" + "23" * 32)
    assert seed != context_seed("0x" + "11" * 32, 1, "0x" + "22" * 32)
