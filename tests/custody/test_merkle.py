"""RFC 9162 Merkle tree: known answers from the Certificate Transparency reference implementation, then every
proof of every tree up to 64 leaves against an independent recursive reference, each mutated to fail."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from custody import merkle
from evidence import LedgerCorrupt, UsageError

# Known-answer vectors from google/certificate-transparency, cpp/merkletree/merkle_tree_test.cc
# (kSHA256EmptyTreeHash, kInputs, kSHA256Roots, kSHA256Paths, kSHA256Proofs). RFC 6962 and RFC 9162 hash
# trees identically. The C++ test numbers leaves from 1; the indexes below are 0-based (leaf - 1).
EMPTY_TREE_HASH = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
INPUTS = ["", "00", "10", "2021", "3031", "40414243", "5051525354555657", "606162636465666768696a6b6c6d6e6f"]
ROOTS = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
# (index, tree size, audit path)
PATHS: list[tuple[int, int, list[str]]] = [
    (0, 1, []),
    (0, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (5, 8, ["bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (2, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (1, 5, ["6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
]
# (old size, new size, consistency proof)
CONSISTENCY: list[tuple[int, int, list[str]]] = [
    (1, 1, []),
    (1, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (6, 8, ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (2, 5, ["5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
]

VECTOR_LEAVES = [merkle.leaf_hash(bytes.fromhex(item)) for item in INPUTS]
EMPTY = bytes.fromhex(EMPTY_TREE_HASH)


# -- an independent reference: the RFC's recursive definitions, written out literally --------------------


def ref_mth(data: Sequence[bytes]) -> bytes:
    n = len(data)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return hashlib.sha256(b"\x00" + data[0]).digest()
    k = 1
    while k * 2 < n:
        k *= 2
    return hashlib.sha256(b"\x01" + ref_mth(data[:k]) + ref_mth(data[k:])).digest()


def ref_path(m: int, data: Sequence[bytes]) -> list[bytes]:
    n = len(data)
    if n == 1:
        return []
    k = 1
    while k * 2 < n:
        k *= 2
    if m < k:
        return [*ref_path(m, data[:k]), ref_mth(data[k:])]
    return [*ref_path(m - k, data[k:]), ref_mth(data[:k])]


def ref_subproof(m: int, data: Sequence[bytes], complete: bool) -> list[bytes]:
    n = len(data)
    if m == n:
        return [] if complete else [ref_mth(data)]
    k = 1
    while k * 2 < n:
        k *= 2
    if m <= k:
        return [*ref_subproof(m, data[:k], complete), ref_mth(data[k:])]
    return [*ref_subproof(m - k, data[k:], False), ref_mth(data[:k])]


# The reference tree of the C++ fuzz tests: leaf i is the single byte i.
DATA = [bytes([i]) for i in range(64)]
DATA_LEAVES = [merkle.leaf_hash(d) for d in DATA]


# -- known answers ------------------------------------------------------------------------------------------


def test_empty_tree_is_sha256_of_nothing() -> None:
    assert merkle.root([]) == EMPTY == merkle.EMPTY_ROOT
    assert merkle.prefix_roots(VECTOR_LEAVES, [0]) == {0: EMPTY}


def test_roots_match_the_reference_vectors() -> None:
    for size in range(1, 9):
        assert merkle.root(VECTOR_LEAVES[:size]).hex() == ROOTS[size - 1]
    assert {size: r.hex() for size, r in merkle.prefix_roots(VECTOR_LEAVES, range(1, 9)).items()} == {
        size: ROOTS[size - 1] for size in range(1, 9)
    }


@pytest.mark.parametrize(("index", "size", "path"), PATHS)
def test_inclusion_paths_match_the_reference_vectors(index: int, size: int, path: list[str]) -> None:
    proof = merkle.inclusion_proof(index, size, VECTOR_LEAVES)
    assert [p.hex() for p in proof] == path
    root = bytes.fromhex(ROOTS[size - 1])
    merkle.verify_inclusion(VECTOR_LEAVES[index], index, size, proof, root)
    check_inclusion_mutations(VECTOR_LEAVES[index], index, size, proof, root)


@pytest.mark.parametrize(("old", "new", "path"), CONSISTENCY)
def test_consistency_proofs_match_the_reference_vectors(old: int, new: int, path: list[str]) -> None:
    proof = merkle.consistency_proof(old, new, VECTOR_LEAVES)
    assert [p.hex() for p in proof] == path
    old_root, new_root = bytes.fromhex(ROOTS[old - 1]), bytes.fromhex(ROOTS[new - 1])
    merkle.verify_consistency(old, new, old_root, new_root, proof)
    if old < new:
        check_consistency_mutations(old, new, old_root, new_root, proof)


# -- every proof of every tree up to 64 leaves ----------------------------------------------------------------


def fails(verify: Callable[..., None], *args: Any) -> None:
    with pytest.raises(LedgerCorrupt):
        verify(*args)


def check_inclusion_mutations(leaf: bytes, index: int, size: int, proof: list[bytes], root: bytes) -> None:
    """The mutations of the C++ VerifierCheck: each must be refused."""
    verify = merkle.verify_inclusion
    for wrong_index in (index - 1, index + 1, index ^ 2):
        fails(verify, leaf, wrong_index, size, proof, root)
    for wrong_size in (size * 2, size // 2):
        fails(verify, leaf, index, wrong_size, proof, root)
    fails(verify, merkle.leaf_hash(b"WrongLeaf"), index, size, proof, root)
    fails(verify, leaf, index, size, proof, EMPTY)
    for position in range(len(proof)):
        changed = list(proof)
        changed[position] = EMPTY
        fails(verify, leaf, index, size, changed, root)
    for wrong in ([*proof, b""], [*proof, root], proof[:-1] if proof else None, [b"", *proof], [root, *proof]):
        if wrong is not None:
            fails(verify, leaf, index, size, wrong, root)


def check_consistency_mutations(old: int, new: int, old_root: bytes, new_root: bytes, proof: list[bytes]) -> None:
    """The mutations of the C++ VerifierConsistencyCheck (for old < new): each must be refused."""
    verify = merkle.verify_consistency
    for wrong_old in (old - 1, old + 1, old ^ 2):
        fails(verify, wrong_old, new, old_root, new_root, proof)
    for wrong_new in (new * 2, new // 2):
        fails(verify, old, wrong_new, old_root, new_root, proof)
    wrong_root = hashlib.sha256(b"WrongRoot").digest()
    fails(verify, old, new, old_root, wrong_root, proof)
    fails(verify, old, new, wrong_root, new_root, proof)
    fails(verify, old, new, new_root, old_root, proof)
    fails(verify, old, new, old_root, new_root, [])
    for position in range(len(proof)):
        changed = list(proof)
        changed[position] = EMPTY
        fails(verify, old, new, old_root, new_root, changed)
    for wrong in ([*proof, b""], [*proof, proof[-1]], proof[:-1], [b"", *proof], [proof[0], *proof]):
        fails(verify, old, new, old_root, new_root, wrong)


def test_roots_of_every_size_match_the_reference() -> None:
    prefix = merkle.prefix_roots(DATA_LEAVES, range(len(DATA) + 1))
    for size in range(len(DATA) + 1):
        expected = ref_mth(DATA[:size])
        assert merkle.root(DATA_LEAVES[:size]) == expected
        assert prefix[size] == expected


def test_every_inclusion_proof_up_to_64_leaves() -> None:
    checked = 0
    for size in range(1, len(DATA) + 1):
        root = ref_mth(DATA[:size])
        for index in range(size):
            proof = merkle.inclusion_proof(index, size, DATA_LEAVES)
            assert proof == ref_path(index, DATA[:size])
            merkle.verify_inclusion(DATA_LEAVES[index], index, size, proof, root)
            check_inclusion_mutations(DATA_LEAVES[index], index, size, proof, root)
            checked += 1
    assert checked == 64 * 65 // 2


def test_every_consistency_proof_up_to_64_leaves() -> None:
    checked = 0
    for new in range(1, len(DATA) + 1):
        new_root = ref_mth(DATA[:new])
        for old in range(1, new + 1):
            proof = merkle.consistency_proof(old, new, DATA_LEAVES)
            assert proof == ref_subproof(old, DATA[:new], True)
            old_root = ref_mth(DATA[:old])
            merkle.verify_consistency(old, new, old_root, new_root, proof)
            if old < new:
                check_consistency_mutations(old, new, old_root, new_root, proof)
            checked += 1
    assert checked == 64 * 65 // 2


# -- edges -----------------------------------------------------------------------------------------------------


def test_consistency_edges_are_strict() -> None:
    root3 = merkle.root(DATA_LEAVES[:3])
    merkle.verify_consistency(0, 3, EMPTY, root3, [])
    merkle.verify_consistency(0, 0, EMPTY, EMPTY, [])
    merkle.verify_consistency(3, 3, root3, root3, [])
    with pytest.raises(LedgerCorrupt, match="empty-tree hash"):
        merkle.verify_consistency(0, 3, root3, root3, [])
    with pytest.raises(LedgerCorrupt, match="must be empty"):
        merkle.verify_consistency(0, 3, EMPTY, root3, [EMPTY])
    with pytest.raises(LedgerCorrupt, match="different roots"):
        merkle.verify_consistency(3, 3, root3, EMPTY, [])
    with pytest.raises(LedgerCorrupt, match="must be empty"):
        merkle.verify_consistency(3, 3, root3, root3, [EMPTY])
    with pytest.raises(LedgerCorrupt, match="must not exceed"):
        merkle.verify_consistency(4, 3, root3, root3, [EMPTY])
    with pytest.raises(LedgerCorrupt, match="proof is empty"):
        merkle.verify_consistency(1, 2, DATA_LEAVES[0], merkle.root(DATA_LEAVES[:2]), [])


def test_inclusion_edges() -> None:
    with pytest.raises(LedgerCorrupt, match="outside the tree"):
        merkle.verify_inclusion(DATA_LEAVES[0], 0, 0, [], EMPTY)
    with pytest.raises(LedgerCorrupt, match="outside the tree"):
        merkle.verify_inclusion(DATA_LEAVES[1], 1, 1, [], DATA_LEAVES[1])
    with pytest.raises(LedgerCorrupt, match="not a 32-byte"):
        merkle.verify_inclusion(b"short", 0, 1, [], DATA_LEAVES[0])
    # A single-leaf tree's root is its leaf hash, with an empty path.
    merkle.verify_inclusion(DATA_LEAVES[0], 0, 1, [], DATA_LEAVES[0])
    with pytest.raises(LedgerCorrupt, match="more than this position needs"):
        merkle.verify_inclusion(DATA_LEAVES[0], 0, 1, [EMPTY], DATA_LEAVES[0])
    with pytest.raises(LedgerCorrupt, match="fewer than this position needs"):
        merkle.verify_inclusion(DATA_LEAVES[0], 0, 2, [], merkle.root(DATA_LEAVES[:2]))


def test_generation_refuses_impossible_requests() -> None:
    with pytest.raises(UsageError):
        merkle.inclusion_proof(3, 3, DATA_LEAVES)
    with pytest.raises(UsageError):
        merkle.inclusion_proof(0, 65, DATA_LEAVES)
    with pytest.raises(UsageError):
        merkle.inclusion_proof(-1, 3, DATA_LEAVES)
    with pytest.raises(UsageError):
        merkle.consistency_proof(4, 3, DATA_LEAVES)
    with pytest.raises(UsageError):
        merkle.consistency_proof(1, 65, DATA_LEAVES)
    with pytest.raises(UsageError, match="not 32"):
        merkle.root([b"an entry, not its leaf hash"])
    with pytest.raises(UsageError):
        merkle.prefix_roots(DATA_LEAVES[:3], [4])


def test_leaf_and_node_hashes_are_domain_separated() -> None:
    # A leaf can never be confused with an interior node of the same bytes (the second-preimage defence).
    left, right = DATA_LEAVES[0], DATA_LEAVES[1]
    assert merkle.node_hash(left, right) == hashlib.sha256(b"\x01" + left + right).digest()
    assert merkle.leaf_hash(left + right) == hashlib.sha256(b"\x00" + left + right).digest()
    assert merkle.leaf_hash(left + right) != merkle.node_hash(left, right)


def test_many_proofs_from_one_built_tree_are_the_rfc_paths() -> None:
    """The bottom-up tree (odd nodes carried up) gives exactly RFC 9162's PATH, for every leaf of every size."""
    for size in range(1, 70):
        leaves = [merkle.leaf_hash(bytes([n % 256, n // 256])) for n in range(size)]
        paths = merkle.inclusion_proofs(range(size), leaves)
        for index in range(size):
            assert paths[index] == merkle.inclusion_proof(index, size, leaves), (size, index)
        assert merkle.levels(leaves)[-1] == [merkle.root(leaves)]


def test_stored_perfect_subtrees_give_every_root_and_proof() -> None:
    """What a ledger keeps (each perfect subtree once) answers every root, audit path and consistency proof of
    every prefix exactly as the tree built from all leaves does."""
    import os

    leaves = [merkle.leaf_hash(os.urandom(8)) for _ in range(130)]
    stored = dict(merkle.extend([], 0, leaves))
    assert len(stored) < 2 * len(leaves)
    for size in range(1, len(leaves) + 1):
        assert merkle.compose(0, size, stored) == merkle.root(leaves[:size])
        assert len(merkle.subtree_nodes(0, size)) == bin(size).count("1")
        for index in {0, size // 3, size - 1}:
            path = [merkle.compose(lo, hi, stored) for lo, hi in merkle.inclusion_ranges(index, size)]
            assert path == merkle.inclusion_proof(index, size, leaves)
        for old in range(size + 1):
            proof = [merkle.compose(lo, hi, stored) for lo, hi in merkle.consistency_ranges(old, size)]
            assert proof == merkle.consistency_proof(old, size, leaves)
    # Growing from a frontier part-way gives the same nodes as building from the start.
    frontier = [(node, stored[node]) for node in merkle.subtree_nodes(0, 77)]
    assert dict(merkle.extend(frontier, 77, leaves[77:])) == {k: v for k, v in stored.items()
                                                              if (k[1] + 1) << k[0] > 77}
    with pytest.raises(UsageError):
        merkle.subtree_nodes(3, 7)  # not a range of the RFC 9162 split
