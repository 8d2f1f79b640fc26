"""RFC 9162 Merkle tree: published vectors, known-answer roots and property tests."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger import merkle
from ledger.errors import IntegrityError, ProofInvalid
from ledger.merkle import (
    EMPTY_ROOT,
    Frontier,
    consistency_proof,
    decompose,
    inclusion_proof,
    leaf_hash,
    node_hash,
    range_hash,
    root_from_leaves,
    verify_consistency,
    verify_inclusion,
)

VECTORS = Path(__file__).parent / "vectors" / "rfc9162"

# Leaf inputs and roots of the RFC 6962 reference tree, as published in transparency-dev/merkle,
# testonly/constants.go (LeafInputs, RootHashes; the roots come from certificate-transparency's
# cpp/merkletree/merkle_tree_test.cc, as google/trillian testonly/compact_merkle_tree.go notes).
LEAF_INPUTS = [
    bytes.fromhex(h)
    for h in [
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    ]
]
ROOT_HASHES = [
    bytes.fromhex(h)
    for h in [
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ]
]
# transparency-dev/merkle testonly/constants.go NodeHashes: [level][index] of the 8-leaf tree.
NODE_HASHES = [
    [
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
        "0298d122906dcfc10892cb53a73992fc5b9f493ea4c9badb27b791b4127a7fe7",
        "07506a85fd9dd2f120eb694f86011e5bb4662e5c415a62917033d4a9624487e7",
        "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        "4271a26be0d8a84f0bd54c8c302e7cb3a3b5d1fa6780a40bcce2873477dab658",
        "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
        "46f6ffadd3d06a09ff3c5860d2755c8b9819db7df44251788c7d8e3180de8eb1",
    ],
    [
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
        "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
    ],
    [
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
    ],
    ["5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"],
]
# transparency-dev/merkle testonly/constants.go CompactTrees: (level, index) per size 0..8.
COMPACT_TREES: list[list[tuple[int, int]]] = [
    [],
    [(0, 0)],
    [(1, 0)],
    [(1, 0), (0, 2)],
    [(2, 0)],
    [(2, 0), (0, 4)],
    [(2, 0), (1, 2)],
    [(2, 0), (1, 2), (0, 6)],
    [(3, 0)],
]


# --- helpers ------------------------------------------------------------------------------------


Store = dict[tuple[int, int], bytes]


def build(leaves: Sequence[bytes]) -> tuple[Store, list[bytes]]:
    """A node store filled from what Frontier completed, and the root after every size."""
    store: Store = {}
    roots = [EMPTY_ROOT]
    frontier = Frontier.empty()
    for i, leaf in enumerate(leaves):
        store[(0, i)] = leaf
        for level, index, h in frontier.append(leaf):
            store[(level, index)] = h
        roots.append(frontier.root())
    return store, roots


class Getter:
    """A dict-backed NodeGetter that counts its calls."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.calls = 0

    def __call__(self, coords: Sequence[tuple[int, int]]) -> Mapping[tuple[int, int], bytes]:
        self.calls += 1
        return {c: self.store[c] for c in coords if c in self.store}


def reference_leaves() -> list[bytes]:
    return [leaf_hash(d) for d in LEAF_INPUTS]


def synthetic_leaves(n: int, salt: int = 0) -> list[bytes]:
    return [leaf_hash(salt.to_bytes(4, "big") + i.to_bytes(4, "big")) for i in range(n)]


def flip(proof: Sequence[bytes], element: int, bit: int) -> list[bytes]:
    out = list(proof)
    h = bytearray(out[element])
    h[bit // 8] ^= 1 << (bit % 8)
    out[element] = bytes(h)
    return out


# --- published vectors (transparency-dev/merkle testdata) ---------------------------------------


def _b64(value: str | None) -> bytes:
    return base64.b64decode(value) if value is not None else b""


def _proof(value: list[str] | None) -> list[bytes]:
    return [_b64(p) for p in value or []]


def _vector_params(kind: str) -> list[Any]:
    files = sorted((VECTORS / kind).glob("*/*.json"))
    assert files, f"no {kind} vectors under {VECTORS}"
    return [
        pytest.param(json.loads(f.read_text()), id=f"{kind}/{f.parent.name}/{f.stem}")
        for f in files
    ]


@pytest.mark.parametrize("vector", _vector_params("inclusion"))
def test_inclusion_vector(vector: dict[str, Any]) -> None:
    args = (
        _b64(vector.get("leafHash")),
        vector["leafIdx"],
        vector["treeSize"],
        _proof(vector.get("proof")),
        _b64(vector.get("root")),
    )
    if vector["wantErr"]:
        with pytest.raises(ProofInvalid):
            verify_inclusion(*args)
    else:
        verify_inclusion(*args)


@pytest.mark.parametrize("vector", _vector_params("consistency"))
def test_consistency_vector(vector: dict[str, Any]) -> None:
    args = (
        vector["size1"],
        vector["size2"],
        _proof(vector.get("proof")),
        _b64(vector.get("root1")),
        _b64(vector.get("root2")),
    )
    if vector["wantErr"]:
        with pytest.raises(ProofInvalid):
            verify_consistency(*args)
    else:
        verify_consistency(*args)


def _happy(kind: str) -> list[Any]:
    return [p for p in _vector_params(kind) if p.id.endswith("/happy-path")]


@pytest.mark.parametrize("vector", _happy("inclusion"))
def test_inclusion_proof_reproduces_vector(vector: dict[str, Any]) -> None:
    # The happy paths are proofs over the reference tree: we must build the same bytes.
    store, roots = build(reference_leaves())
    index, size = vector["leafIdx"], vector["treeSize"]
    assert roots[size] == _b64(vector["root"])
    assert inclusion_proof(index, size, Getter(store)) == _proof(vector.get("proof"))


@pytest.mark.parametrize("vector", _happy("consistency"))
def test_consistency_proof_reproduces_vector(vector: dict[str, Any]) -> None:
    store, roots = build(reference_leaves())
    size1, size2 = vector["size1"], vector["size2"]
    assert (roots[size1], roots[size2]) == (_b64(vector["root1"]), _b64(vector["root2"]))
    assert consistency_proof(size1, size2, Getter(store)) == _proof(vector.get("proof"))


# --- known answers ------------------------------------------------------------------------------


def test_empty_root_is_sha256_of_nothing() -> None:
    assert ROOT_HASHES[0] == EMPTY_ROOT
    assert root_from_leaves([]) == EMPTY_ROOT
    assert Frontier.empty().root() == EMPTY_ROOT


@pytest.mark.parametrize("size", range(1, 9))
def test_reference_roots(size: int) -> None:
    leaves = reference_leaves()[:size]
    assert root_from_leaves(leaves) == ROOT_HASHES[size]
    frontier = Frontier.empty()
    frontier.extend(leaves)
    assert frontier.root() == ROOT_HASHES[size]


def test_reference_node_hashes_are_what_frontier_completes() -> None:
    store, _ = build(reference_leaves())
    want = {
        (level, index): bytes.fromhex(h)
        for level, row in enumerate(NODE_HASHES)
        for index, h in enumerate(row)
    }
    assert store == want


@pytest.mark.parametrize("size", range(9))
def test_reference_compact_trees(size: int) -> None:
    store, _ = build(reference_leaves())
    frontier = Frontier.empty()
    frontier.extend(reference_leaves()[:size])
    assert decompose(0, size) == COMPACT_TREES[size]
    assert list(frontier.hashes) == [store[n] for n in COMPACT_TREES[size]]


def test_hash_prefixes() -> None:
    # RFC 9162 2.1.1 domain separation: 0x00 for leaves, 0x01 for interior nodes.
    a, b = leaf_hash(b"a"), leaf_hash(b"b")
    assert node_hash(a, b) != leaf_hash(a + b)
    assert leaf_hash(b"") == ROOT_HASHES[1]


# --- decompose, range_hash, getters -------------------------------------------------------------


def test_decompose() -> None:
    assert decompose(0, 0) == []
    assert decompose(0, 13) == [(3, 0), (2, 2), (0, 12)]
    assert decompose(5, 8) == [(0, 5), (1, 3)]
    assert decompose(4, 7) == [(1, 2), (0, 6)]
    assert decompose(8, 16) == [(3, 1)]
    with pytest.raises(ValueError):
        decompose(3, 2)


def test_proofs_use_one_getter_call() -> None:
    leaves = synthetic_leaves(1000)
    store, roots = build(leaves)
    get = Getter(store)
    proof = inclusion_proof(617, 1000, get)
    assert get.calls == 1
    verify_inclusion(leaves[617], 617, 1000, proof, roots[1000])
    get = Getter(store)
    proof = consistency_proof(300, 1000, get)
    assert get.calls == 1
    verify_consistency(300, 1000, proof, roots[300], roots[1000])
    get = Getter(store)
    assert merkle.root(999, get) == roots[999]
    assert get.calls == 1
    assert merkle.root(0, get) == EMPTY_ROOT and get.calls == 1


def test_range_hash_of_a_right_edge_subtree() -> None:
    leaves = synthetic_leaves(13)
    store, _ = build(leaves)
    # MTH(D[8:13]) is the right child of the root of a 13-leaf tree.
    assert range_hash(8, 13, Getter(store)) == root_from_leaves(leaves[8:13])


def test_missing_node_is_an_integrity_error() -> None:
    store, _ = build(synthetic_leaves(8))
    del store[(1, 1)]
    with pytest.raises(IntegrityError):
        inclusion_proof(0, 8, Getter(store))


def test_consistency_proof_trivial_sizes() -> None:
    store, _ = build(synthetic_leaves(5))
    assert consistency_proof(5, 5, Getter(store)) == []
    with pytest.raises(ProofInvalid):
        consistency_proof(6, 5, Getter(store))
    with pytest.raises(ProofInvalid):
        inclusion_proof(5, 5, Getter(store))


# --- Frontier -----------------------------------------------------------------------------------


def test_frontier_bytes_round_trip() -> None:
    frontier = Frontier.empty()
    frontier.extend(synthetic_leaves(11))
    again = Frontier.from_bytes(11, frontier.to_bytes())
    assert again == frontier and again.root() == frontier.root()
    assert len(frontier.to_bytes()) == 32 * 3


def test_frontier_rejects_inconsistent_state() -> None:
    with pytest.raises(IntegrityError):
        Frontier.from_bytes(3, b"\x00" * 32)
    with pytest.raises(IntegrityError):
        Frontier.from_bytes(1, b"\x00" * 31)
    with pytest.raises(IntegrityError):
        Frontier(-1, [])
    with pytest.raises(ValueError):
        Frontier.empty().append(b"short")


def test_frontier_append_reports_completed_subtrees() -> None:
    frontier = Frontier.empty()
    frontier.extend(synthetic_leaves(7))
    completed = frontier.append(synthetic_leaves(8)[7])
    assert [(level, index) for level, index, _ in completed] == [(1, 3), (2, 1), (3, 0)]
    assert completed[-1][2] == frontier.root()


# --- malformed input never raises IndexError ----------------------------------------------------


H = leaf_hash(b"x")


@pytest.mark.parametrize(
    "args",
    [
        pytest.param((H, -1, 4, [H, H], H), id="negative-index"),
        pytest.param((H, 0, -4, [H, H], H), id="negative-size"),
        pytest.param((H[:31], 0, 1, [], H[:31]), id="short-leaf-and-root"),
        pytest.param((H, 0, 2, [H + b"\x00"], H), id="long-proof-element"),
        pytest.param((H, 0, 2, [], H), id="missing-element"),
        pytest.param((H, 0, 0, [], EMPTY_ROOT), id="empty-tree"),
        pytest.param((H, 2**64 - 1, 2**64, [H] * 64, H), id="huge"),
    ],
)
def test_bad_inclusion_input(args: tuple[bytes, int, int, list[bytes], bytes]) -> None:
    with pytest.raises(ProofInvalid):
        verify_inclusion(*args)


@pytest.mark.parametrize(
    "args",
    [
        pytest.param((-1, 4, [H], H, H), id="negative-size1"),
        pytest.param((2, -4, [H], H, H), id="negative-size2"),
        pytest.param((5, 4, [], H, H), id="size1-above-size2"),
        pytest.param((3, 3, [], H, leaf_hash(b"y")), id="equal-sizes-other-roots"),
        pytest.param((3, 3, [], b"", b""), id="equal-sizes-empty-roots"),
        pytest.param((0, 3, [H], H, H), id="from-empty-with-proof"),
        pytest.param((3, 4, [H[:1], H], H, H), id="short-element"),
        pytest.param((3, 4, [], H, H), id="empty-proof"),
    ],
)
def test_bad_consistency_input(args: tuple[int, int, list[bytes], bytes, bytes]) -> None:
    with pytest.raises(ProofInvalid):
        verify_consistency(*args)


def test_consistency_edge_cases_accepted_like_the_reference() -> None:
    # transparency-dev/merkle proof/verify_test.go: (0, 0) and (1, 1) with equal roots and an
    # empty proof verify; so does (0, n) with an empty proof, whatever root1 is.
    verify_consistency(0, 0, [], EMPTY_ROOT, EMPTY_ROOT)
    verify_consistency(1, 1, [], H, H)
    verify_consistency(0, 1, [], EMPTY_ROOT, H)


# --- properties ---------------------------------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(size=st.integers(0, 300), salt=st.integers(0, 2**32 - 1))
def test_frontier_matches_root_from_leaves_at_every_size(size: int, salt: int) -> None:
    leaves = synthetic_leaves(size, salt)
    _, roots = build(leaves)
    for n in range(size + 1):
        assert roots[n] == root_from_leaves(leaves[:n])


@st.composite
def _tree_and_index(draw: st.DrawFn) -> tuple[int, int, int]:
    size = draw(st.integers(1, 300))
    return size, draw(st.integers(0, size - 1)), draw(st.integers(0, 2**32 - 1))


@settings(max_examples=100, deadline=None)
@given(case=_tree_and_index(), data=st.data())
def test_inclusion_proofs_verify_and_tampering_fails(
    case: tuple[int, int, int], data: st.DataObject
) -> None:
    size, index, salt = case
    leaves = synthetic_leaves(size, salt)
    store, roots = build(leaves)
    proof = inclusion_proof(index, size, Getter(store))
    verify_inclusion(leaves[index], index, size, proof, roots[size])
    if proof:
        element = data.draw(st.integers(0, len(proof) - 1))
        bit = data.draw(st.integers(0, 255))
        with pytest.raises(ProofInvalid):
            verify_inclusion(leaves[index], index, size, flip(proof, element, bit), roots[size])
    if size > 1:
        other = data.draw(st.integers(0, size - 1).filter(lambda i: i != index))
        with pytest.raises(ProofInvalid):
            verify_inclusion(leaves[index], other, size, proof, roots[size])


@st.composite
def _two_sizes(draw: st.DrawFn) -> tuple[int, int, int]:
    size2 = draw(st.integers(1, 300))
    return draw(st.integers(1, size2)), size2, draw(st.integers(0, 2**32 - 1))


@settings(max_examples=100, deadline=None)
@given(case=_two_sizes(), data=st.data())
def test_consistency_proofs_verify_and_tampering_fails(
    case: tuple[int, int, int], data: st.DataObject
) -> None:
    size1, size2, salt = case
    store, roots = build(synthetic_leaves(size2, salt))
    proof = consistency_proof(size1, size2, Getter(store))
    verify_consistency(size1, size2, proof, roots[size1], roots[size2])
    if proof:
        element = data.draw(st.integers(0, len(proof) - 1))
        bit = data.draw(st.integers(0, 255))
        with pytest.raises(ProofInvalid):
            verify_consistency(size1, size2, flip(proof, element, bit), roots[size1], roots[size2])
    if size1 < size2:
        other = data.draw(st.integers(1, size2).filter(lambda s: s != size1))
        with pytest.raises(ProofInvalid):
            verify_consistency(other, size2, proof, roots[size1], roots[size2])


@pytest.mark.slow
def test_million_leaves() -> None:
    # The level-by-level MTH handles 2**20 leaves without recursion, and agrees with Frontier.
    leaves = [leaf_hash(i.to_bytes(4, "big")) for i in range(1 << 20)]
    frontier = Frontier.empty()
    frontier.extend(leaves)
    assert root_from_leaves(leaves) == frontier.root()


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(0, 70), min_size=1, max_size=8),
    st.sampled_from([1, 2, 4]),
    st.randoms(use_true_random=False),
)
def test_extend_level_by_level_equals_appending_one_leaf_at_a_time(
    runs: list[int], min_level: int, rnd: Any
) -> None:
    one, many = Frontier.empty(), Frontier.empty()
    for n in runs:
        leaves = [rnd.randbytes(32) for _ in range(n)]
        singly = [node for leaf in leaves for node in one.append(leaf)]
        together = many.extend(leaves, min_level=min_level)
        assert many == one and many.root() == one.root()
        assert sorted(together) == sorted(n for n in singly if n[0] >= min_level)


def test_extend_refuses_a_short_leaf_and_changes_nothing() -> None:
    frontier = Frontier.empty()
    frontier.extend([b"\x01" * 32] * 3)
    before = frontier.copy()
    with pytest.raises(ValueError, match="31 bytes"):
        frontier.extend([b"\x02" * 32, b"\x03" * 31])
    assert frontier == before
