"""RFC 9162 section 2.1 Merkle tree: hashes, compact frontier, proofs and their verification.

This module does no I/O. Hashes are 32-byte SHA-256 digests. Stored tree nodes are addressed as
perfect subtrees `(level, index)`: level 0 holds the leaf hashes, and the subtree at level L,
index I covers leaves [I * 2**L, (I + 1) * 2**L). Proof builders read such nodes through a
`NodeGetter` that the caller backs with its database; each proof asks for all of its nodes in one
call.

Verification follows RFC 9162 sections 2.1.3.2 and 2.1.4.2 step by step, with the edge cases
(size1 == size2, size1 == 0) treated as the transparency-dev/merkle reference and its published
test vectors treat them. Every failure raises `ProofInvalid`; malformed input (a hash that is not
32 bytes, a negative size or index) fails the same way and never raises IndexError.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from hashlib import sha256
from itertools import count, repeat

from .errors import IntegrityError, ProofInvalid

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "Frontier",
    "NodeGetter",
    "consistency_proof",
    "decompose",
    "inclusion_proof",
    "leaf_hash",
    "node_hash",
    "range_hash",
    "root",
    "root_from_leaves",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE = 32

# RFC 9162 2.1.1: the hash of an empty list is the hash of an empty string.
EMPTY_ROOT: bytes = sha256(b"").digest()

LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"

Node = tuple[int, int]
"""A perfect subtree `(level, index)`, covering leaves [index << level, (index + 1) << level)."""

NodeGetter = Callable[[Sequence[Node]], Mapping[Node, bytes]]
"""Given perfect subtree coordinates, returns their hashes (level 0 = leaf hashes)."""

_INCLUSION = "inclusion proof"
_CONSISTENCY = "consistency proof"


# --- Hashing (RFC 9162 2.1.1) -------------------------------------------------------------------


def leaf_hash(data: bytes) -> bytes:
    """RFC 9162 2.1.1: MTH({d(0)}) = HASH(0x00 || d(0))."""
    return sha256(LEAF_PREFIX + data).digest()


def leaf_hashes(data: Iterable[bytes]) -> list[bytes]:
    """`leaf_hash` of each item, in one pass."""
    digest, prefix = sha256, LEAF_PREFIX
    return [digest(prefix + d).digest() for d in data]


def node_hash(left: bytes, right: bytes) -> bytes:
    """RFC 9162 2.1.1: the interior node HASH(0x01 || left || right)."""
    return sha256(_NODE_PREFIX + left + right).digest()


def root_from_leaves(leaf_hashes: Sequence[bytes]) -> bytes:
    """RFC 9162 2.1.1 MTH over already-hashed leaves, computed level by level.

    Pairing neighbours and carrying an odd last node up unchanged gives the same tree as the RFC's
    split at the largest power of two smaller than n, without recursion.
    """
    _require_leaf_hashes(leaf_hashes)
    if not leaf_hashes:
        return EMPTY_ROOT
    level = list(leaf_hashes)
    while len(level) > 1:
        level = _next_level(level)
    return level[0]


def _next_level(level: list[bytes]) -> list[bytes]:
    digest = sha256
    up = [
        digest(_NODE_PREFIX + level[i] + level[i + 1]).digest() for i in range(0, len(level) - 1, 2)
    ]
    if len(level) % 2:
        up.append(level[-1])
    return up


def _require_leaf_hashes(leaf_hashes: Sequence[bytes]) -> None:
    for i, h in enumerate(leaf_hashes):
        if len(h) != HASH_SIZE:
            raise ValueError(f"leaf hash {i} is {len(h)} bytes, expected {HASH_SIZE}")


# --- Compact range of the right edge ------------------------------------------------------------


Completed = list[tuple[int, int, bytes]]
"""Perfect subtrees `(level, index, hash)` with level >= 1 that an append completed."""


class Frontier:
    """The right edge of a tree of `size` leaves: one perfect subtree hash per set bit of size.

    Hashes are ordered largest (leftmost) first, so their right fold is the RFC 9162 2.1.1 MTH.
    Appending a leaf merges equal-sized subtrees like a binary counter and reports each perfect
    subtree it completed, which is what a store needs to serve proofs later.
    """

    __slots__ = ("_size", "_hashes")

    def __init__(self, size: int, hashes: Sequence[bytes]) -> None:
        _check_frontier(size, hashes)
        self._size = size
        self._hashes = list(hashes)

    @classmethod
    def empty(cls) -> Frontier:
        return cls(0, [])

    @classmethod
    def from_bytes(cls, size: int, data: bytes) -> Frontier:
        """Rebuild a frontier from `to_bytes()` output and the size it was taken at."""
        if len(data) % HASH_SIZE:
            raise IntegrityError(None, "merkle frontier", f"{len(data)} bytes is not whole hashes")
        hashes = [data[i : i + HASH_SIZE] for i in range(0, len(data), HASH_SIZE)]
        return cls(size, hashes)

    @property
    def size(self) -> int:
        return self._size

    @property
    def hashes(self) -> tuple[bytes, ...]:
        return tuple(self._hashes)

    def append(self, leaf: bytes) -> Completed:
        """Add one leaf hash; return the perfect subtrees (level >= 1) this completed."""
        if len(leaf) != HASH_SIZE:
            raise ValueError(f"leaf hash is {len(leaf)} bytes, expected {HASH_SIZE}")
        index = self._size
        node, level = leaf, 0
        completed: Completed = []
        while (index >> level) & 1:
            node = node_hash(self._hashes.pop(), node)
            level += 1
            completed.append((level, index >> level, node))
        self._hashes.append(node)
        self._size = index + 1
        return completed

    def extend(self, leaves: Iterable[bytes], min_level: int = 1) -> Completed:
        """Append many leaf hashes in order; return every perfect subtree they completed from
        `min_level` up (a store keeping only the larger subtrees asks for fewer).

        Level by level, as a binary counter adds a number: the run of new nodes at a level
        takes the frontier's node there as its left neighbour when it starts at an odd index,
        pairs up into the next level's run, and leaves an odd last node as the new frontier
        node of its level. Every node is hashed once, in one comprehension per level.
        """
        run = list(leaves)
        added = len(run)
        for leaf in run:
            if len(leaf) != HASH_SIZE:
                raise ValueError(f"leaf hash is {len(leaf)} bytes, expected {HASH_SIZE}")
        size = self._size
        pending = {lv: h for lv, h in zip(_set_bits(size), self._hashes, strict=True)}
        completed: Completed = []
        digest, prefix = sha256, _NODE_PREFIX
        level, start = 0, size  # `start` is the run's first index at this level
        while run:
            if start & 1:  # the frontier's node here is the run's left neighbour
                run.insert(0, pending.pop(level))
                start -= 1
            up = [
                digest(prefix + a + b).digest() for a, b in zip(run[::2], run[1::2], strict=False)
            ]
            if len(run) & 1:
                pending[level] = run[-1]
            level += 1
            start >>= 1
            if level >= min_level:
                completed.extend(zip(repeat(level), count(start), up))
            run = up
        self._size = size + added
        self._hashes = [pending[lv] for lv in sorted(pending, reverse=True)]
        return completed

    def root(self) -> bytes:
        """RFC 9162 2.1.1 MTH of the whole tree: the right fold of the frontier hashes."""
        return _fold_right(self._hashes) if self._hashes else EMPTY_ROOT

    def to_bytes(self) -> bytes:
        return b"".join(self._hashes)

    def copy(self) -> Frontier:
        return Frontier(self._size, self._hashes)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Frontier):
            return NotImplemented
        return self._size == other._size and self._hashes == other._hashes

    def __hash__(self) -> int:
        return hash((self._size, self.to_bytes()))

    def __repr__(self) -> str:
        return f"Frontier(size={self._size}, root={self.root().hex()})"


def _set_bits(size: int) -> list[int]:
    """The levels of the perfect subtrees a tree of `size` leaves ends with, largest first."""
    return [lv for lv in range(size.bit_length() - 1, -1, -1) if size >> lv & 1]


def _check_frontier(size: int, hashes: Sequence[bytes]) -> None:
    if size < 0:
        raise IntegrityError(None, "merkle frontier", f"negative size {size}")
    if len(hashes) != size.bit_count():
        raise IntegrityError(
            None,
            "merkle frontier",
            f"{len(hashes)} hashes for size {size}, expected {size.bit_count()}",
        )
    for h in hashes:
        if len(h) != HASH_SIZE:
            raise IntegrityError(None, "merkle frontier", f"a hash is {len(h)} bytes")


def _fold_right(hashes: Sequence[bytes]) -> bytes:
    acc = hashes[-1]
    for h in reversed(hashes[:-1]):
        acc = node_hash(h, acc)
    return acc


# --- Ranges of perfect subtrees -----------------------------------------------------------------


def decompose(start: int, end: int) -> list[Node]:
    """The aligned perfect subtrees `(level, index)` covering leaves [start, end), left to right.

    Each step takes the largest subtree that starts at `start` (aligned) and ends by `end`. For
    start == 0 these are the set bits of `end`, largest first.
    """
    if start < 0 or end < start:
        raise ValueError(f"bad leaf range [{start}, {end})")
    nodes: list[Node] = []
    while start < end:
        level = _largest_level(start, end - start)
        nodes.append((level, start >> level))
        start += 1 << level
    return nodes


def _largest_level(start: int, count: int) -> int:
    level = count.bit_length() - 1
    if start:
        level = min(level, (start & -start).bit_length() - 1)
    return level


def range_hash(start: int, end: int, get: NodeGetter) -> bytes:
    """MTH of D[start:end] (RFC 9162 2.1.1) for the ranges RFC 9162 proofs use.

    Those ranges start on a boundary aligned to a power of two at least their length, so their
    MTH is the right fold of `decompose(start, end)`. The nodes are read in one `get` call.
    """
    if start >= end:
        raise ValueError(f"empty leaf range [{start}, {end})")
    nodes = decompose(start, end)
    hashes = _fetch(get, nodes)
    return _fold_right([hashes[n] for n in nodes])


def root(size: int, get: NodeGetter) -> bytes:
    """RFC 9162 2.1.1 MTH of a tree of `size` leaves read from the store."""
    if size < 0:
        raise ValueError(f"negative tree size {size}")
    return range_hash(0, size, get) if size else EMPTY_ROOT


def _fetch(get: NodeGetter, nodes: Sequence[Node]) -> Mapping[Node, bytes]:
    wanted = list(dict.fromkeys(nodes))
    found = get(wanted) if wanted else {}
    for node in wanted:
        h = found.get(node)
        if h is None or len(h) != HASH_SIZE:
            what = "missing" if h is None else f"{len(h)} bytes"
            raise IntegrityError(None, "merkle node", f"node {node} is {what}")
    return found


def _hash_ranges(ranges: Sequence[tuple[int, int]], get: NodeGetter) -> list[bytes]:
    per_range = [decompose(a, b) for a, b in ranges]
    hashes = _fetch(get, [n for nodes in per_range for n in nodes])
    return [_fold_right([hashes[n] for n in nodes]) for nodes in per_range]


def _split(n: int) -> int:
    """RFC 9162 2.1.1: the largest power of two smaller than n (n > 1)."""
    return 1 << ((n - 1).bit_length() - 1)


# --- Proof generation (RFC 9162 2.1.3.1 and 2.1.4.1) --------------------------------------------


def inclusion_proof(index: int, size: int, get: NodeGetter) -> list[bytes]:
    """RFC 9162 2.1.3.1 PATH(index, D[size]), in RFC order (from the leaf up)."""
    if not 0 <= index < size:
        raise ProofInvalid(_INCLUSION, f"index {index} is not in a tree of size {size}")
    return _hash_ranges(_inclusion_ranges(index, size), get)


def _inclusion_ranges(index: int, size: int) -> list[tuple[int, int]]:
    # RFC 9162 2.1.3.1: PATH(m, D[n]) = PATH(m, D[0:k]) : MTH(D[k:n]) for m < k,
    # and PATH(m - k, D[k:n]) : MTH(D[0:k]) for m >= k. Walked from the root down, then reversed.
    ranges: list[tuple[int, int]] = []
    lo, hi = 0, size
    while hi - lo > 1:
        k = _split(hi - lo)
        if index < lo + k:
            ranges.append((lo + k, hi))
            hi = lo + k
        else:
            ranges.append((lo, lo + k))
            lo += k
    ranges.reverse()
    return ranges


def consistency_proof(size1: int, size2: int, get: NodeGetter) -> list[bytes]:
    """RFC 9162 2.1.4.1 PROOF(size1, D[size2]) = SUBPROOF(size1, D[size2], true).

    Empty when size1 == size2, and (as the reference verifier accepts) when size1 == 0.
    """
    if not 0 <= size1 <= size2:
        raise ProofInvalid(_CONSISTENCY, f"sizes {size1} and {size2} are not 0 <= size1 <= size2")
    if size1 in (0, size2):
        return []
    return _hash_ranges(_consistency_ranges(size1, size2), get)


def _consistency_ranges(size1: int, size2: int) -> list[tuple[int, int]]:
    # RFC 9162 2.1.4.1 SUBPROOF(m, D[n], b): for m == n, [] if b else [MTH(D[n])]; for m <= k,
    # SUBPROOF(m, D[0:k], b) : MTH(D[k:n]); for m > k, SUBPROOF(m - k, D[k:n], false) : MTH(D[0:k]).
    ranges: list[tuple[int, int]] = []
    lo, hi, m, complete = 0, size2, size1, True
    while m != hi - lo:
        k = _split(hi - lo)
        if m <= k:
            ranges.append((lo + k, hi))
            hi = lo + k
        else:
            ranges.append((lo, lo + k))
            lo, m, complete = lo + k, m - k, False
    if not complete:
        ranges.append((lo, hi))
    ranges.reverse()
    return ranges


# --- Verification (RFC 9162 2.1.3.2 and 2.1.4.2) ------------------------------------------------


def verify_inclusion(
    leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """RFC 9162 2.1.3.2: check that `leaf` (a leaf hash) is at `index` in the tree `root`."""
    _require_hashes(_INCLUSION, leaf=leaf, root=root, proof=proof)
    if index < 0 or size < 0:
        raise ProofInvalid(_INCLUSION, f"negative index {index} or size {size}")
    # Step 1: the leaf must be inside the tree.
    if index >= size:
        raise ProofInvalid(_INCLUSION, f"index {index} >= tree size {size}")
    computed = _inclusion_root(leaf, index, size, proof)
    # Step 5: r must equal the root hash.
    if computed != root:
        raise ProofInvalid(_INCLUSION, f"computed root {computed.hex()} != {root.hex()}")


def _inclusion_root(leaf: bytes, index: int, size: int, proof: Sequence[bytes]) -> bytes:
    # Steps 2 and 3: fn = leaf_index, sn = tree_size - 1, r = hash.
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        # Step 4a: a path element beyond the root is a failure.
        if sn == 0:
            raise ProofInvalid(_INCLUSION, "proof has more elements than the path")
        # Step 4b.
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            fn, sn = _shift_to_right_child(fn, sn)
        else:
            r = node_hash(r, p)
        # Step 4c.
        fn, sn = fn >> 1, sn >> 1
    # Step 5: the path must end at the root.
    if sn != 0:
        raise ProofInvalid(_INCLUSION, f"proof has too few elements ({len(proof)})")
    return r


def _shift_to_right_child(fn: int, sn: int) -> tuple[int, int]:
    # RFC 9162 2.1.3.2 step 4b.ii / 2.1.4.2 step 6b.iii: if LSB(fn) is not set, right-shift fn
    # and sn equally until either LSB(fn) is set or fn is 0.
    while fn and not fn & 1:
        fn, sn = fn >> 1, sn >> 1
    return fn, sn


def verify_consistency(
    size1: int, size2: int, proof: Sequence[bytes], root1: bytes, root2: bytes
) -> None:
    """RFC 9162 2.1.4.2: check that the tree (size1, root1) is a prefix of (size2, root2)."""
    _require_hashes(_CONSISTENCY, root1=root1, root2=root2, proof=proof)
    if size1 < 0 or size2 < 0:
        raise ProofInvalid(_CONSISTENCY, f"negative size {size1} or {size2}")
    if size1 > size2:
        raise ProofInvalid(_CONSISTENCY, f"size1 {size1} > size2 {size2}")
    # Edge cases as in transparency-dev/merkle: equal sizes and an empty first tree take an empty
    # proof; equal sizes must then have equal roots, and an empty tree is a prefix of any tree.
    if size1 in (0, size2):
        if proof:
            raise ProofInvalid(_CONSISTENCY, f"{len(proof)} proof elements, expected none")
        if size1 == size2 and root1 != root2:
            raise ProofInvalid(_CONSISTENCY, "equal sizes but different roots")
        return
    # Step 1: an empty path fails.
    if not proof:
        raise ProofInvalid(_CONSISTENCY, "empty proof")
    fr, sr, sn = _consistency_roots(size1, size2, proof, root1)
    # Step 7: fr == first_hash, sr == second_hash and sn == 0.
    if sn != 0:
        raise ProofInvalid(_CONSISTENCY, f"proof has too few elements ({len(proof)})")
    if fr != root1:
        raise ProofInvalid(_CONSISTENCY, f"computed root1 {fr.hex()} != {root1.hex()}")
    if sr != root2:
        raise ProofInvalid(_CONSISTENCY, f"computed root2 {sr.hex()} != {root2.hex()}")


def _consistency_roots(
    size1: int, size2: int, proof: Sequence[bytes], root1: bytes
) -> tuple[bytes, bytes, int]:
    path = list(proof)
    # Step 2: if first is an exact power of 2, prepend first_hash to the path.
    if size1 & (size1 - 1) == 0:
        path.insert(0, root1)
    # Step 3: fn = first - 1, sn = second - 1.
    fn, sn = size1 - 1, size2 - 1
    # Step 4: if LSB(fn) is set, right-shift fn and sn equally until LSB(fn) is not set.
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    # Step 5: fr and sr start at the first path value.
    fr = sr = path[0]
    for c in path[1:]:
        # Step 6a: a path element beyond the root is a failure.
        if sn == 0:
            raise ProofInvalid(_CONSISTENCY, "proof has more elements than the path")
        # Step 6b.
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            fn, sn = _shift_to_right_child(fn, sn)
        else:
            sr = node_hash(sr, c)
        # Step 6c.
        fn, sn = fn >> 1, sn >> 1
    return fr, sr, sn


def _require_hashes(what: str, proof: Sequence[bytes], **named: bytes) -> None:
    for name, h in named.items():
        if len(h) != HASH_SIZE:
            raise ProofInvalid(what, f"{name} is {len(h)} bytes, expected {HASH_SIZE}")
    for i, h in enumerate(proof):
        if len(h) != HASH_SIZE:
            raise ProofInvalid(what, f"proof element {i} is {len(h)} bytes, expected {HASH_SIZE}")
