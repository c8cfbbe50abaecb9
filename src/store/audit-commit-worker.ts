import { parentPort, workerData } from 'node:worker_threads';
import Database from 'better-sqlite3';
import type { EncodedBatch } from './audit-batches.js';
import { batchInserter, writerPragmas } from './sqlite.js';

/**
 * The audit commit thread (see audit-commit-thread.ts): its own connection
 * to the state database, committing the batches the event loop encoded.
 * Every answer is posted back AND written to the shared status words, so
 * that a synchronous flush() on the main thread can wait for it with
 * Atomics.wait instead of a turn of the event loop.
 *
 * Shared words: [0] id of the last batch answered, [1] its outcome
 * (1 committed, 2 failed).
 */
interface Job extends EncodedBatch {
  id: number;
}

const { file, status } = workerData as { file: string; status: SharedArrayBuffer };
const words = new Int32Array(status);
const db = new Database(file);
writerPragmas(db);
const insert = batchInserter(db);

parentPort!.on('message', (job: Job) => {
  let error: string | undefined;
  try {
    insert(job);
  } catch (err) {
    error = err instanceof Error ? err.message : String(err);
  }
  Atomics.store(words, 1, error === undefined ? 1 : 2);
  Atomics.store(words, 0, job.id);
  Atomics.notify(words, 0);
  parentPort!.postMessage({ id: job.id, error });
});
