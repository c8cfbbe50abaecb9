import { parentPort, workerData } from 'node:worker_threads';
import Database from 'better-sqlite3';
import type { CommitJobs } from './commit-thread.js';
import { batchInserter, sessionUpserter, writerPragmas } from './sqlite.js';

/**
 * A commit thread (see commit-thread.ts): its own connection to the state
 * database, committing the jobs of one kind the event loop sends: encoded
 * audit batches, or rows of the sessions index. Every answer is posted
 * back AND written to the shared status words, so that a synchronous
 * flush on the main thread can wait for it with Atomics.wait instead of a
 * turn of the event loop.
 *
 * Shared words: [0] id of the last job answered, [1] its outcome
 * (1 committed, 2 failed).
 */
const { file, status, kind } = workerData as { file: string; status: SharedArrayBuffer; kind: keyof CommitJobs };
const words = new Int32Array(status);
const db = new Database(file);
writerPragmas(db);
const insertBatch = kind === 'audit' ? batchInserter(db) : undefined;
const upsertRows = kind === 'sessions' ? sessionUpserter(db) : undefined;

parentPort!.on('message', (job: { id: number } & (CommitJobs['audit'] | CommitJobs['sessions'])) => {
  let error: string | undefined;
  try {
    if (insertBatch) insertBatch(job as CommitJobs['audit']);
    else upsertRows!((job as CommitJobs['sessions']).rows);
  } catch (err) {
    error = err instanceof Error ? err.message : String(err);
  }
  Atomics.store(words, 1, error === undefined ? 1 : 2);
  Atomics.store(words, 0, job.id);
  Atomics.notify(words, 0);
  parentPort!.postMessage({ id: job.id, error });
});
