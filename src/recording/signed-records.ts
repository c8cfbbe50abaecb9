/**
 * The payload of the signed records, checkpoints and footers
 * (docs/recording-format.md, "Signed records"), as each format version lays
 * it out. The JSON body (CheckpointBody, FooterBody) is the same in all.
 *
 * Versions 1 and 2: one Ed25519 signature per record.
 *
 *   payload = u32 jsonLength, json, signature(64)
 *   signed  = kindDomain || json
 *
 * Version 3: one signature per batch. The seal thread makes the
 * checkpoints and footers of every recording it serves in one message
 * together (a flush tick's, or the closes of sessions that ended within
 * 100 ms of each other), hashes each body into a leaf of a Merkle tree
 * (merkle.ts) and signs the tree's root once. Each record carries its
 * leaf's index, the tree's size and its inclusion path, so it verifies
 * alone, without the other recordings of its batch.
 *
 *   payload = u32 jsonLength, json, u32 leafIndex, u32 treeSize,
 *             u8 pathLength, pathLength x 32-byte hash, signature(64)
 *   leaf    = SHA-256(0x00 || kindDomain || json)
 *   signed  = BATCH_SIG_DOMAIN || u32 treeSize || root
 *
 * kindDomain (CHECKPOINT_SIG_DOMAIN or FOOTER_SIG_DOMAIN) is inside the
 * leaf, so a checkpoint's body can no more pass for a footer's than in
 * version 2, and the body binds the record to its session (sessionId) and
 * to every byte before it (chain, finalChain), as before.
 *
 * Why: under connection churn (pgbench -C) a short session's only signed
 * record is its footer, and signing it was a quarter of the seal thread's
 * work per session: Node's crypto.sign took 36-38 µs in a warm loop on
 * the bench host and some 85 µs per session in the seal thread, less than
 * half of it the curve arithmetic (the rest is OpenSSL 3 setting up each
 * operation). A batch of n footers now costs one signature and about 2n
 * SHA-256 of a few hundred bytes (1-2 µs each).
 */
import { sign, verify, type KeyObject } from 'node:crypto';
import { HASH_SIZE, leafHash, merkleTree, rootFromPath } from './merkle.js';

export const SIGNATURE_SIZE = 64;
export const CHECKPOINT_SIG_DOMAIN = Buffer.from('sluice-recording-checkpoint-v1\0', 'latin1');
export const FOOTER_SIG_DOMAIN = Buffer.from('sluice-recording-footer-v1\0', 'latin1');
/** Version 3: what a batch's signature covers, before the tree size and root. */
export const BATCH_SIG_DOMAIN = Buffer.from('sluice-recording-batch-v3\0', 'latin1');
/** The first version whose signed records carry a batch proof. */
export const BATCH_SIGNED_VERSION = 3;
/**
 * Leaves per tree: a larger batch is signed as several trees. Bounds a
 * path at 8 hashes (a proof at 265 bytes), which the writer's size
 * estimates for a checkpoint and a footer allow for.
 */
export const MAX_BATCH_LEAVES = 256;
const MAX_PATH = 32;

export interface SignedPayload {
  json: Buffer;
  body: unknown;
  signature: Buffer;
  /** Version 3: where the body's leaf sits in the tree whose root the signature covers. */
  proof?: { index: number; size: number; path: Buffer[] };
}

/** What one signed record says, before it is signed. */
export interface SignedItem {
  /** CHECKPOINT_SIG_DOMAIN or FOOTER_SIG_DOMAIN. */
  domain: Buffer;
  /** The body, as JSON (UTF-8). */
  json: Buffer;
}

/** A body as the JSON a signed record carries. */
export function signedItem(domain: Buffer, body: object): SignedItem {
  return { domain, json: Buffer.from(JSON.stringify(body), 'utf8') };
}

// --- version 3: a signature per batch -----------------------------------------

function treeSigned(size: number, root: Buffer): Buffer {
  const n = Buffer.allocUnsafe(4);
  n.writeUInt32BE(size, 0);
  return Buffer.concat([BATCH_SIG_DOMAIN, n, root]);
}

/**
 * Version 3 payloads for `items`, in order: one signature per
 * MAX_BATCH_LEAVES items, each payload with its own inclusion proof.
 */
export function batchSignedPayloads(items: readonly SignedItem[], privateKey: KeyObject): Buffer[] {
  const out: Buffer[] = [];
  for (let from = 0; from < items.length; from += MAX_BATCH_LEAVES) {
    const batch = items.slice(from, from + MAX_BATCH_LEAVES);
    const tree = merkleTree(batch.map((i) => leafHash(i.domain, i.json)));
    const sig = sign(null, treeSigned(batch.length, tree.root), privateKey);
    for (let k = 0; k < batch.length; k++) {
      const json = batch[k]!.json;
      const path = tree.paths[k]!;
      const p = Buffer.allocUnsafe(4 + json.length + 9 + path.length * HASH_SIZE + SIGNATURE_SIZE);
      let at = p.writeUInt32BE(json.length, 0);
      at += json.copy(p, at);
      at = p.writeUInt32BE(k, at);
      at = p.writeUInt32BE(batch.length, at);
      at = p.writeUInt8(path.length, at);
      for (const h of path) at += h.copy(p, at);
      sig.copy(p, at);
      out.push(p);
    }
  }
  return out;
}

// --- reading ------------------------------------------------------------------

/**
 * The largest checkpoint or footer JSON a reader parses. The writer's are
 * a few hundred bytes (ids, counts, a hash, a close reason).
 */
export const MAX_SIGNED_JSON = 64 * 1024;

function parseJson(json: Buffer): { ok: true; body: unknown } | { ok: false } {
  try {
    return { ok: true, body: JSON.parse(json.toString('utf8')) };
  } catch {
    return { ok: false };
  }
}

/**
 * Splits a checkpoint's or footer's payload as a file of `version` (1 to 3)
 * lays it out; undefined when its shape is wrong or the version unknown.
 */
export function parseSignedPayload(version: number, payload: Buffer): SignedPayload | undefined {
  if (version < 1 || version > BATCH_SIGNED_VERSION || payload.length < 4 + SIGNATURE_SIZE) return undefined;
  const n = payload.readUInt32BE(0);
  // Parsed before its signature is checked: a crafted record's
  // 256 MiB of nested JSON would take the reader's memory, and the gateway's (the API's verify).
  if (n > MAX_SIGNED_JSON) return undefined;
  const json = payload.subarray(4, Math.min(payload.length, 4 + n));
  if (version < BATCH_SIGNED_VERSION) {
    if (4 + n + SIGNATURE_SIZE !== payload.length) return undefined;
    const j = parseJson(json);
    return j.ok ? { json, body: j.body, signature: payload.subarray(4 + n) } : undefined;
  }
  let at = 4 + n;
  if (at + 9 > payload.length) return undefined;
  const index = payload.readUInt32BE(at);
  const size = payload.readUInt32BE(at + 4);
  const pathLength = payload[at + 8]!;
  at += 9;
  if (pathLength > MAX_PATH || at + pathLength * HASH_SIZE + SIGNATURE_SIZE !== payload.length) return undefined;
  const path: Buffer[] = [];
  for (let i = 0; i < pathLength; i++, at += HASH_SIZE) path.push(payload.subarray(at, at + HASH_SIZE));
  const j = parseJson(json);
  return j.ok ? { json, body: j.body, signature: payload.subarray(at), proof: { index, size, path } } : undefined;
}

/** Does the signature (and in version 3 the inclusion proof under it) cover `domain` and this body? */
export function verifySignedPayload(domain: Buffer, p: SignedPayload, publicKey: KeyObject): boolean {
  try {
    if (p.proof === undefined) return verify(null, Buffer.concat([domain, p.json]), publicKey, p.signature);
    const root = rootFromPath(leafHash(domain, p.json), p.proof.index, p.proof.size, p.proof.path);
    return root !== undefined && verify(null, treeSigned(p.proof.size, root), publicKey, p.signature);
  } catch {
    return false;
  }
}
