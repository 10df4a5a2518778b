"""RFC 9162 (Certificate Transparency v2) Merkle tree: tree heads, inclusion and consistency proofs.

    leaf hash   MTH({d}) = SHA-256(0x00 || d)
    node hash   SHA-256(0x01 || left || right)
    empty tree  MTH({}) = SHA-256("")
    split       k = the largest power of two smaller than n; MTH(D[n]) = node(MTH(D[0:k]), MTH(D[k:n]))

Every function here works on *leaf hashes* (32-byte `leaf_hash(entry)` values), never on entries:
the ledger computes each leaf hash once and asks for roots and proofs over any prefix of that list.
Indexes are 0-based (RFC 9162 `leaf_index`); sizes count leaves.

Proof generation raises `UsageError` for impossible requests (an index outside the tree). Proof
verification follows RFC 9162 §2.1.3.2 and §2.1.4.2 step by step and raises `LedgerCorrupt`
naming what does not hold; it never returns a boolean that a caller could forget to check.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

from evidence import LedgerCorrupt, UsageError

HASH_SIZE = 32
LEAF_PREFIX = b"\x00"
NODE_PREFIX = b"\x01"
EMPTY_ROOT = hashlib.sha256(b"").digest()


def leaf_hash(entry: bytes) -> bytes:
    """RFC 9162 leaf hash of one entry's bytes."""
    return hashlib.sha256(LEAF_PREFIX + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """RFC 9162 interior node hash."""
    return hashlib.sha256(NODE_PREFIX + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two strictly smaller than n (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def _is_power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def _check_leaves(leaves: Sequence[bytes]) -> None:
    for index, value in enumerate(leaves):
        if len(value) != HASH_SIZE:
            raise UsageError(f"leaf hash {index} is {len(value)} bytes, not {HASH_SIZE}: pass leaf_hash(entry) values")


def _mth(leaves: Sequence[bytes]) -> bytes:
    """MTH of a list of leaf hashes, iteratively.

    A stack of perfect subtrees, largest first, is folded from the right: that is exactly the
    RFC's recursive split, because the largest power of two below n is the biggest perfect subtree.
    """
    if not leaves:
        return EMPTY_ROOT
    stack: list[tuple[int, bytes]] = []
    for value in leaves:
        size, digest = 1, value
        while stack and stack[-1][0] == size:
            left_size, left = stack.pop()
            size, digest = left_size + size, node_hash(left, digest)
        stack.append((size, digest))
    digest = stack[-1][1]
    for _size, left in reversed(stack[:-1]):
        digest = node_hash(left, digest)
    return digest


def root(leaves: Sequence[bytes]) -> bytes:
    """The Merkle tree head (root hash) of all the given leaf hashes."""
    _check_leaves(leaves)
    return _mth(leaves)


def prefix_roots(leaves: Sequence[bytes], sizes: Iterable[int]) -> dict[int, bytes]:
    """Roots of several prefixes of one leaf list in one pass (e.g. every checkpoint's tree size)."""
    _check_leaves(leaves)
    wanted = set(sizes)
    for size in wanted:
        if not 0 <= size <= len(leaves):
            raise UsageError(f"tree size {size} is outside 0..{len(leaves)}")
    found: dict[int, bytes] = {}
    if 0 in wanted:
        found[0] = EMPTY_ROOT
    stack: list[tuple[int, bytes]] = []
    for count, value in enumerate(leaves, start=1):
        size, digest = 1, value
        while stack and stack[-1][0] == size:
            left_size, left = stack.pop()
            size, digest = left_size + size, node_hash(left, digest)
        stack.append((size, digest))
        if count in wanted:
            folded = stack[-1][1]
            for _size, left in reversed(stack[:-1]):
                folded = node_hash(left, folded)
            found[count] = folded
    return found


def inclusion_proof(index: int, size: int, leaves: Sequence[bytes]) -> list[bytes]:
    """The audit path (RFC 9162 §2.1.3.1 PATH) of leaf `index` in the tree of the first `size` leaves."""
    if not 0 <= index < size <= len(leaves):
        raise UsageError(f"no leaf {index} in a tree of size {size} built from {len(leaves)} leaves")
    _check_leaves(leaves[:size])
    path: list[bytes] = []
    lo, hi = 0, size
    # Walk from the root down to the leaf; siblings are collected top-down, then reversed (leaf first).
    while hi - lo > 1:
        k = _split(hi - lo)
        if index < lo + k:
            path.append(_mth(leaves[lo + k : hi]))
            hi = lo + k
        else:
            path.append(_mth(leaves[lo : lo + k]))
            lo = lo + k
    path.reverse()
    return path


def levels(leaves: Sequence[bytes]) -> list[list[bytes]]:
    """Every level of the tree, leaves first: pairs hashed, an odd last node carried up unchanged. That is the
    RFC 9162 tree built bottom-up (its split at the largest power of two puts every odd node at the right edge)."""
    _check_leaves(leaves)
    built = [list(leaves)]
    while len(built[-1]) > 1:
        below = built[-1]
        above = [node_hash(below[i], below[i + 1]) for i in range(0, len(below) - 1, 2)]
        if len(below) % 2:
            above.append(below[-1])
        built.append(above)
    return built


def inclusion_proofs(indices: Iterable[int], leaves: Sequence[bytes]) -> dict[int, list[bytes]]:
    """The audit paths of many leaves of the tree of all `leaves`, the tree built once: O(n + k log n), where
    `inclusion_proof` one at a time costs O(n) each."""
    tree = levels(leaves) if leaves else [[]]
    size = len(leaves)
    paths: dict[int, list[bytes]] = {}
    for index in indices:
        if not 0 <= index < size:
            raise UsageError(f"no leaf {index} in a tree of size {size}")
        path = []
        position = index
        for level in tree[:-1]:
            sibling = position ^ 1
            if sibling < len(level):
                path.append(level[sibling])
            position //= 2
        paths[index] = path
    return paths


def consistency_proof(old_size: int, new_size: int, leaves: Sequence[bytes]) -> list[bytes]:
    """RFC 9162 §2.1.4.1 PROOF(m, D[n]) that the first `old_size` leaves are a prefix of the first `new_size`.

    For old_size == 0 or old_size == new_size the proof is empty (the RFC defines 0 < m < n only).
    """
    if not 0 <= old_size <= new_size <= len(leaves):
        raise UsageError(f"no consistency proof from size {old_size} to {new_size} over {len(leaves)} leaves")
    _check_leaves(leaves[:new_size])
    if old_size in (0, new_size):
        return []
    return _subproof(old_size, leaves[:new_size], complete=True)


def _subproof(m: int, leaves: Sequence[bytes], *, complete: bool) -> list[bytes]:
    n = len(leaves)
    if m == n:
        return [] if complete else [_mth(leaves)]
    k = _split(n)
    if m <= k:
        return [*_subproof(m, leaves[:k], complete=complete), _mth(leaves[k:])]
    return [*_subproof(m - k, leaves[k:], complete=False), _mth(leaves[:k])]


def _short(value: bytes) -> str:
    return value.hex()[:16] + "…"


def _check_hash(value: bytes, what: str) -> None:
    if len(value) != HASH_SIZE:
        raise LedgerCorrupt(f"{what} is {len(value)} bytes, not a {HASH_SIZE}-byte SHA-256 hash")


def verify_inclusion(leaf: bytes, index: int, size: int, proof: Sequence[bytes], expected_root: bytes) -> None:
    """RFC 9162 §2.1.3.2: check that `leaf` (a leaf hash) sits at `index` of the tree of `size` with `expected_root`.

    Raises `LedgerCorrupt` naming the failed check.
    """
    where = f"inclusion proof for leaf {index} in a tree of size {size}"
    if not 0 <= index < size:
        raise LedgerCorrupt(f"{where}: the index is outside the tree")
    _check_hash(leaf, f"{where}: the leaf hash")
    _check_hash(expected_root, f"{where}: the root")
    for position, value in enumerate(proof):
        _check_hash(value, f"{where}: proof hash {position}")
    fn, sn = index, size - 1
    digest = leaf
    for value in proof:
        if sn == 0:
            raise LedgerCorrupt(f"{where}: the proof has {len(proof)} hashes, more than this position needs")
        if fn & 1 or fn == sn:
            digest = node_hash(value, digest)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            digest = node_hash(digest, value)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise LedgerCorrupt(f"{where}: the proof has {len(proof)} hashes, fewer than this position needs")
    if digest != expected_root:
        raise LedgerCorrupt(
            f"{where}: the path leads to root {_short(digest)}, not to the expected root {_short(expected_root)}"
        )


def verify_consistency(old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]) -> None:
    """RFC 9162 §2.1.4.2: check that the tree of `old_size` with `old_root` is a prefix of the one of `new_size`.

    Stricter than the RFC at the edges: from size 0 the old root must be the empty-tree hash, and
    for equal sizes the roots must be equal; both with an empty proof. Raises `LedgerCorrupt`.
    """
    where = f"consistency proof from size {old_size} to {new_size}"
    if not 0 <= old_size <= new_size:
        raise LedgerCorrupt(f"{where}: the old size must not exceed the new size")
    _check_hash(old_root, f"{where}: the old root")
    _check_hash(new_root, f"{where}: the new root")
    for position, value in enumerate(proof):
        _check_hash(value, f"{where}: proof hash {position}")
    if old_size in (0, new_size):
        if proof:
            raise LedgerCorrupt(f"{where}: the proof must be empty, it has {len(proof)} hashes")
        if old_size == 0 and old_root != EMPTY_ROOT:
            raise LedgerCorrupt(f"{where}: the old root is not the empty-tree hash")
        if old_size == new_size and old_root != new_root:
            raise LedgerCorrupt(f"{where}: trees of the same size have different roots")
        return
    if not proof:
        raise LedgerCorrupt(f"{where}: the proof is empty")
    path = [old_root, *proof] if _is_power_of_two(old_size) else list(proof)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for value in path[1:]:
        if sn == 0:
            raise LedgerCorrupt(f"{where}: the proof has {len(proof)} hashes, more than these sizes need")
        if fn & 1 or fn == sn:
            fr = node_hash(value, fr)
            sr = node_hash(value, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, value)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise LedgerCorrupt(f"{where}: the proof has {len(proof)} hashes, fewer than these sizes need")
    if fr != old_root:
        raise LedgerCorrupt(f"{where}: the proof rebuilds old root {_short(fr)}, not {_short(old_root)}")
    if sr != new_root:
        raise LedgerCorrupt(f"{where}: the proof rebuilds new root {_short(sr)}, not {_short(new_root)}")


# -- the tree kept as perfect subtrees -------------------------------------------------------------------
# A node (level, index) is the hash of the perfect subtree over leaves [index * 2**level, (index + 1) * 2**level).
# A ledger stores each one once it is complete; every RFC 9162 hash over any prefix, and so every proof, is made
# of O(log n) of them (O(log^2 n) for a whole path), so proofs never read the log.

Node = tuple[int, int]  # (level, index)


def subtree_nodes(lo: int, hi: int) -> list[Node]:
    """The perfect subtrees whose hashes make MTH(D[lo:hi]), left to right, for a range the RFC 9162 split
    produces (every range a root, path or consistency proof of a prefix needs)."""
    if not 0 <= lo < hi:
        raise UsageError(f"no subtree over leaves [{lo}, {hi})")
    nodes: list[Node] = []
    while True:
        n = hi - lo
        if _is_power_of_two(n):
            level = n.bit_length() - 1
            if lo % n:
                raise UsageError(f"leaves [{lo}, {hi}) are not a subtree of the RFC 9162 tree")
            nodes.append((level, lo >> level))
            return nodes
        k = _split(n)
        nodes.extend(subtree_nodes(lo, lo + k))
        lo += k


def compose(lo: int, hi: int, stored: dict[Node, bytes]) -> bytes:
    """MTH(D[lo:hi]) from the stored perfect subtrees (`subtree_nodes(lo, hi)` must all be in `stored`)."""
    n = hi - lo
    if _is_power_of_two(n):
        level = n.bit_length() - 1
        return stored[(level, lo >> level)]
    k = _split(n)
    return node_hash(compose(lo, lo + k, stored), compose(lo + k, hi, stored))


def inclusion_ranges(index: int, size: int) -> list[tuple[int, int]]:
    """The leaf ranges whose hashes are the audit path of leaf `index` in a tree of `size` leaves, leaf first."""
    if not 0 <= index < size:
        raise UsageError(f"no leaf {index} in a tree of size {size}")
    ranges: list[tuple[int, int]] = []
    lo, hi = 0, size
    while hi - lo > 1:
        k = _split(hi - lo)
        if index < lo + k:
            ranges.append((lo + k, hi))
            hi = lo + k
        else:
            ranges.append((lo, lo + k))
            lo = lo + k
    ranges.reverse()
    return ranges


def consistency_ranges(old_size: int, new_size: int) -> list[tuple[int, int]]:
    """The leaf ranges whose hashes are RFC 9162 PROOF(old_size, D[new_size]), in proof order."""
    if not 0 <= old_size <= new_size:
        raise UsageError(f"no consistency proof from size {old_size} to {new_size}")
    if old_size in (0, new_size):
        return []

    def sub(m: int, lo: int, hi: int, complete: bool) -> list[tuple[int, int]]:
        n = hi - lo
        if m == n:
            return [] if complete else [(lo, hi)]
        k = _split(n)
        if m <= k:
            return [*sub(m, lo, lo + k, complete), (lo + k, hi)]
        return [*sub(m - k, lo + k, hi, False), (lo, lo + k)]

    return sub(old_size, 0, new_size, True)


def extend(frontier: list[tuple[Node, bytes]], size: int, leaves: Iterable[bytes]) -> list[tuple[Node, bytes]]:
    """Append leaves to a tree of `size` leaves whose `frontier` (its perfect subtrees, `subtree_nodes(0, size)`
    with their hashes, left to right) is given; returns every node completed, leaves included, in order. The
    frontier list is updated in place."""
    made: list[tuple[Node, bytes]] = []
    for leaf in leaves:
        node: tuple[Node, bytes] = ((0, size), leaf)
        made.append(node)
        size += 1
        while frontier and frontier[-1][0][0] == node[0][0]:
            (level, index), left = frontier.pop()
            node = ((level + 1, index >> 1), node_hash(left, node[1]))
            made.append(node)
        frontier.append(node)
    return made
