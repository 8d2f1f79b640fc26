"""C2SP tlog-checkpoint / signed-note: known answers from golang.org/x/mod and C2SP, round trips,
tampering and malformed notes."""

from __future__ import annotations

import base64
from hashlib import sha256

import pytest
from nacl.signing import SigningKey

from ledger.checkpoint import (
    Checkpoint,
    key_id,
    parse_checkpoint,
    sign_checkpoint,
    sign_note,
    verify_checkpoint,
    verify_note,
)
from ledger.errors import ProofInvalid, SignatureInvalid

# golang.org/x/mod sumdb/note/note_test.go (TestNewVerifier, TestSign, TestOpen): the verifier
# keys are name+hex(key ID)+base64(0x01 || Ed25519 public key), the signer key is
# PRIVATE+KEY+name+hex(key ID)+base64(0x01 || Ed25519 seed).
PETER_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
PETER_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
ENOCH_VKEY = "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop"
GO_TEXT = (
    "If you think cryptography is the answer to your problem,\n"
    "then you don't know what your problem is.\n"
)
PETER_SIG = (
    "— PeterNeumann "
    "x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
)
ENOCH_SIG = (
    "— EnochRoot "
    "rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01oOTGwnWLox33WWd1RvMc+QQ=\n"
)

# c2sp.org/tlog-checkpoint: the example checkpoint (its public key is not published).
C2SP_TEXT = "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
# c2sp.org/signed-note: the example note, whose text holds an empty line.
C2SP_NOTE = (
    "Ognuno sta solo sul cuor della terra\ntrafitto da un raggio di sole:\n\ned è subito sera.\n"
    "\n— quasimodo.example/salvatore "
    "NnugSzTjtVAewIS+Z/iJhUPeFDkO/5QQ2i5ddnGITLlC+EhfLW9oJKONrMouFSQU0xMcXxj99ihAQwaqP3ZekRwNtIc=\n"
)

NAME = "log.edvex.example/main"
ROOT = sha256(b"some tree").digest()


def _vkey(vkey: str) -> tuple[str, str, bytes]:
    name, kid, b64 = vkey.split("+", 2)
    raw = base64.b64decode(b64)
    assert raw[0] == 0x01 and len(raw) == 33
    return name, kid, raw[1:]


def _skey(skey: str) -> SigningKey:
    raw = base64.b64decode(skey.split("+", 4)[4])
    assert raw[0] == 0x01
    return SigningKey(raw[1:])


@pytest.fixture
def key() -> SigningKey:
    return SigningKey.generate()


@pytest.fixture
def cp() -> Checkpoint:
    return Checkpoint(NAME, 1234, ROOT)


def _pub(key: SigningKey) -> bytes:
    return bytes(key.verify_key)


# --- known answers ------------------------------------------------------------------------------


@pytest.mark.parametrize("vkey", [PETER_VKEY, ENOCH_VKEY])
def test_key_id_known_answer(vkey: str) -> None:
    name, kid, public = _vkey(vkey)
    assert key_id(name, public).hex() == kid


def test_signer_key_matches_verifier_key() -> None:
    assert _pub(_skey(PETER_SKEY)) == _vkey(PETER_VKEY)[2]


def test_sign_note_reproduces_go_signature() -> None:
    # Ed25519 is deterministic: the same seed and text give the published note byte for byte.
    assert sign_note(GO_TEXT, "PeterNeumann", _skey(PETER_SKEY)) == GO_TEXT + "\n" + PETER_SIG


def test_verify_go_doubly_signed_note() -> None:
    note = GO_TEXT + "\n" + PETER_SIG + ENOCH_SIG
    for vkey in (PETER_VKEY, ENOCH_VKEY):
        name, _, public = _vkey(vkey)
        assert verify_note(note, name, public) == GO_TEXT


def test_go_note_is_not_a_checkpoint() -> None:
    name, _, public = _vkey(PETER_VKEY)
    with pytest.raises(ProofInvalid):
        verify_checkpoint(GO_TEXT + "\n" + PETER_SIG, name, public)


def test_parse_c2sp_example_checkpoint() -> None:
    cp = parse_checkpoint(C2SP_TEXT)
    assert (cp.origin, cp.size, len(cp.root)) == ("example.com/behind-the-sofa", 20852163, 32)
    assert cp.body() == C2SP_TEXT


def test_c2sp_note_splits_at_the_last_blank_line(key: SigningKey) -> None:
    # Well-formed but signed by an unknown key: a signature failure, not a malformed note.
    with pytest.raises(SignatureInvalid):
        verify_note(C2SP_NOTE, "quasimodo.example/salvatore", _pub(key))
    text = C2SP_NOTE[: C2SP_NOTE.rindex("\n\n") + 1]
    assert verify_note(sign_note(text, "me", key), "me", _pub(key)) == text


# --- round trip ---------------------------------------------------------------------------------


def test_body_format(cp: Checkpoint) -> None:
    assert cp.body() == f"{NAME}\n1234\n{base64.b64encode(ROOT).decode()}\n"


def test_round_trip(cp: Checkpoint, key: SigningKey) -> None:
    note = sign_checkpoint(cp, NAME, key)
    text, _, sig_line = note.partition("\n\n")
    assert text + "\n" == cp.body()
    assert sig_line.startswith(f"\u2014 {NAME} ") and sig_line.endswith("\n")
    blob = base64.b64decode(sig_line.split(" ")[2])
    assert blob[:4] == key_id(NAME, _pub(key)) and len(blob) == 68
    assert verify_checkpoint(note, NAME, _pub(key)) == cp


def test_round_trip_empty_tree_and_extensions(key: SigningKey) -> None:
    cp = Checkpoint(NAME, 0, sha256(b"").digest(), ("ext one", "ext two"))
    note = sign_checkpoint(cp, NAME, key)
    assert note.splitlines()[1] == "0"
    assert verify_checkpoint(note, NAME, _pub(key)) == cp


def test_cosignature_from_another_key_is_ignored(cp: Checkpoint, key: SigningKey) -> None:
    witness = SigningKey.generate()
    note = sign_checkpoint(cp, NAME, key)
    cosig = sign_note(cp.body(), "witness.example/w1", witness).split("\n\n")[1]
    assert verify_checkpoint(note + cosig, NAME, _pub(key)) == cp
    text, sigs = note.split("\n\n")
    assert verify_checkpoint(text + "\n\n" + cosig + sigs, NAME, _pub(key)) == cp
    # A line under our name with another key's ID is an unknown key too.
    same_name = sign_note(cp.body(), NAME, witness).split("\n\n")[1]
    assert verify_checkpoint(note + same_name, NAME, _pub(key)) == cp


# --- tampering ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(lambda n: n.replace("\n1234\n", "\n1235\n"), id="size"),
        pytest.param(
            lambda n: n.replace(
                base64.b64encode(ROOT).decode(), base64.b64encode(bytes(32)).decode()
            ),
            id="root",
        ),
        pytest.param(lambda n: n.replace(NAME + "\n", "log.edvex.example/other\n", 1), id="origin"),
        pytest.param(lambda n: n.replace("\n\n", "\nextra\n\n"), id="extension-added"),
    ],
)
def test_tampered_text_fails(cp: Checkpoint, key: SigningKey, tamper: object) -> None:
    note = sign_checkpoint(cp, NAME, key)
    assert callable(tamper)
    bad = tamper(note)
    assert bad != note
    with pytest.raises(SignatureInvalid):
        verify_checkpoint(bad, NAME, _pub(key))


def test_wrong_key_fails(cp: Checkpoint, key: SigningKey) -> None:
    note = sign_checkpoint(cp, NAME, key)
    with pytest.raises(SignatureInvalid):
        verify_checkpoint(note, NAME, _pub(SigningKey.generate()))
    with pytest.raises(SignatureInvalid):
        verify_checkpoint(note, "log.edvex.example/other", _pub(key))


def test_bad_signature_from_our_key_rejects_the_note(cp: Checkpoint, key: SigningKey) -> None:
    note = sign_checkpoint(cp, NAME, key)
    text, sig_line = note.split("\n\n")
    blob = bytearray(base64.b64decode(sig_line.split(" ")[2]))
    blob[10] ^= 1
    forged = f"\u2014 {NAME} {base64.b64encode(bytes(blob)).decode()}\n"
    with pytest.raises(SignatureInvalid):
        verify_checkpoint(note + forged, NAME, _pub(key))
    short = f"\u2014 {NAME} {base64.b64encode(bytes(blob[:40])).decode()}\n"
    with pytest.raises(SignatureInvalid):
        verify_checkpoint(text + "\n\n" + short, NAME, _pub(key))


# --- malformed notes ----------------------------------------------------------------------------


def _signed(text: str, key: SigningKey) -> str:
    return sign_note(text, NAME, key)


B64_ROOT = base64.b64encode(ROOT).decode()
URL_B64 = base64.urlsafe_b64encode(b"\xff" * 32).decode()


@pytest.mark.parametrize(
    "text",
    [
        pytest.param(f"{NAME}\n01\n{B64_ROOT}\n", id="size-leading-zero"),
        pytest.param(f"{NAME}\n+1\n{B64_ROOT}\n", id="size-plus"),
        pytest.param(f"{NAME}\n 1\n{B64_ROOT}\n", id="size-space"),
        pytest.param(f"{NAME}\n1.0\n{B64_ROOT}\n", id="size-decimal-point"),
        pytest.param(f"{NAME}\n\u0661\n{B64_ROOT}\n", id="size-arabic-digit"),
        pytest.param(f"{NAME}\n18446744073709551616\n{B64_ROOT}\n", id="size-over-uint64"),
        pytest.param(f"{NAME}\n1\n{B64_ROOT[:-1]}\n", id="root-bad-padding"),
        pytest.param(f"{NAME}\n1\n{base64.b64encode(ROOT[:31]).decode()}\n", id="root-31-bytes"),
        pytest.param(f"{NAME}\n1\n{URL_B64}\n", id="url-b64"),
        pytest.param(f"{NAME}\n1\n", id="two-lines"),
        pytest.param(f"{NAME}\n1\n{B64_ROOT}\n\nafter-empty\n", id="empty-extension"),
    ],
)
def test_signed_but_malformed_checkpoint(text: str, key: SigningKey) -> None:
    with pytest.raises(ProofInvalid):
        verify_checkpoint(_signed(text, key), NAME, _pub(key))


def test_non_canonical_base64_root_is_rejected(key: SigningKey) -> None:
    encoded = base64.b64encode(bytes(32)).decode()  # "AAAA...AAA=", last char carries 2 spare bits
    noncanonical = encoded[:-2] + "B="
    assert base64.b64decode(noncanonical) == bytes(32)
    with pytest.raises(ProofInvalid):
        verify_checkpoint(_signed(f"{NAME}\n1\n{noncanonical}\n", key), NAME, _pub(key))


@pytest.mark.parametrize(
    "mangle",
    [
        pytest.param(lambda n: n.replace("\n\n", "\n"), id="no-blank-line"),
        pytest.param(lambda n: n[:-1], id="no-final-newline"),
        pytest.param(lambda n: n + "Unexpected line.\n", id="trailing-text-line"),
        pytest.param(lambda n: n.replace("\u2014 ", "- "), id="hyphen-not-em-dash"),
        pytest.param(lambda n: n.replace(NAME + " ", "bad name "), id="space-in-key-name"),
        pytest.param(lambda n: n.replace(NAME + " ", "a+b "), id="plus-in-key-name"),
        pytest.param(lambda n: n[:-3] + "!=\n", id="signature-not-base64"),
        pytest.param(lambda n: "\x01" + n, id="control-character"),
        pytest.param(lambda n: n + "\u2014 x AAAA\n", id="signature-too-short"),
        pytest.param(lambda n: n + n.split("\n\n")[1] * 100, id="too-many-signatures"),
        pytest.param(lambda n: "\ud800" + n, id="lone-surrogate"),
    ],
)
def test_malformed_note(cp: Checkpoint, key: SigningKey, mangle: object) -> None:
    assert callable(mangle)
    with pytest.raises(ProofInvalid):
        verify_checkpoint(mangle(sign_checkpoint(cp, NAME, key)), NAME, _pub(key))


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param(("", 1, ROOT), id="empty-origin"),
        pytest.param(("a\nb", 1, ROOT), id="two-line-origin"),
        pytest.param((NAME, -1, ROOT), id="negative-size"),
        pytest.param((NAME, 2**64, ROOT), id="size-over-uint64"),
        pytest.param((NAME, 1, ROOT[:31]), id="short-root"),
    ],
)
def test_checkpoint_fields_are_checked(fields: tuple[str, int, bytes]) -> None:
    with pytest.raises(ValueError):
        Checkpoint(*fields)


def test_signing_rejects_bad_key_names(cp: Checkpoint, key: SigningKey) -> None:
    for name in ("", "has space", "has+plus"):
        with pytest.raises(ValueError):
            sign_checkpoint(cp, name, key)
