/**
 * The Merkle tree of RFC 9162 (Certificate Transparency 2.0, section 2.1),
 * over SHA-256: what lets one signature cover a batch of signed records
 * (signed-records.ts) while each record still verifies alone, from its own
 * leaf, its index, the tree's size and its inclusion path.
 *
 *   leaf hash  = SHA-256(0x00 || leaf data)
 *   node hash  = SHA-256(0x01 || left || right)
 *   MTH(D[n])  = node(MTH(D[0:k]), MTH(D[k:n])), k the largest power of two < n
 *
 * The two prefixes keep a leaf from ever passing for an interior node (the
 * second-preimage attack on plain hash trees). The tree is not balanced
 * for sizes that are not powers of two, which is why a path alone does not
 * tell left from right: the verifier needs the index and the size too.
 */
import { createHash } from 'node:crypto';

export const HASH_SIZE = 32;
const LEAF_PREFIX = Buffer.from([0x00]);
const NODE_PREFIX = Buffer.from([0x01]);

/** SHA-256(0x00 || parts...): the leaf hash of the concatenated parts. */
export function leafHash(...parts: Uint8Array[]): Buffer {
  const h = createHash('sha256').update(LEAF_PREFIX);
  for (const p of parts) h.update(p);
  return h.digest();
}

function nodeHash(left: Uint8Array, right: Uint8Array): Buffer {
  return createHash('sha256').update(NODE_PREFIX).update(left).update(right).digest();
}

/** The largest power of two below n (n >= 2). */
function split(n: number): number {
  let k = 1;
  while (k * 2 < n) k *= 2;
  return k;
}

export interface MerkleTree {
  root: Buffer;
  /** Inclusion path of each leaf, by index: the sibling hashes from the leaf's level up. */
  paths: Buffer[][];
}

/** The root over `leaves` (leaf hashes, at least one) and every leaf's inclusion path, in one pass. */
export function merkleTree(leaves: readonly Buffer[]): MerkleTree {
  if (leaves.length === 0) throw new RangeError('a Merkle tree needs at least one leaf');
  const paths: Buffer[][] = leaves.map(() => []);
  // Children before parents, so each path gets its siblings from the bottom up (RFC 9162, PATH).
  const build = (lo: number, hi: number): Buffer => {
    if (hi - lo === 1) return leaves[lo]!;
    const mid = lo + split(hi - lo);
    const left = build(lo, mid);
    const right = build(mid, hi);
    for (let i = lo; i < mid; i++) paths[i]!.push(right);
    for (let i = mid; i < hi; i++) paths[i]!.push(left);
    return nodeHash(left, right);
  };
  return { root: build(0, leaves.length), paths };
}

/**
 * The root that `leaf` at `index` in a tree of `size` leaves leads to by
 * `path` (RFC 9162, section 2.1.3.2); undefined when the path cannot be
 * one of such a tree (too short, too long, index out of range). The caller
 * compares the result with a trusted root, here by checking a signature
 * over it.
 */
export function rootFromPath(leaf: Buffer, index: number, size: number, path: readonly Buffer[]): Buffer | undefined {
  if (!Number.isSafeInteger(index) || !Number.isSafeInteger(size) || index < 0 || index >= size) return undefined;
  let fn = index;
  let sn = size - 1;
  let r = leaf;
  for (const p of path) {
    if (p.length !== HASH_SIZE || sn === 0) return undefined;
    if (fn % 2 === 1 || fn === sn) {
      r = nodeHash(p, r);
      // A right edge with no sibling at this level: climb until this node is a right child.
      while (fn % 2 === 0 && fn !== 0) {
        fn = Math.floor(fn / 2);
        sn = Math.floor(sn / 2);
      }
    } else {
      r = nodeHash(r, p);
    }
    fn = Math.floor(fn / 2);
    sn = Math.floor(sn / 2);
  }
  return sn === 0 ? r : undefined;
}
