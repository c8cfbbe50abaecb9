/**
 * Spawns a real, throw-away PostgreSQL 15 for tests.
 *
 * We run as root and PostgreSQL refuses root, so every server lives in its
 * own fs.mkdtemp directory chowned to the `postgres` user, and initdb and
 * the postmaster run as that user. Both are spawned with Node's `uid`/`gid`
 * spawn options rather than through `runuser`: runuser stays as a parent
 * process, turns our SIGINT into SIGTERM (smart shutdown, which waits for
 * clients) and, if it is SIGKILLed, orphans the postmaster. Spawning the
 * postmaster directly means the pid we hold is the postmaster's.
 *
 * initdb costs about a second, so it runs once per test process into a
 * template cluster; every server is a `cp -a` of it with its own
 * pg_hba.conf (the auth mode is the only thing that differs).
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { chown, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { PG_BIN } from './process.js';
import { freePort, release, track, trackDir } from './children.js';

const execFileP = promisify(execFile);

const BIN = PG_BIN;

export type PgAuth = 'scram-sha-256' | 'md5' | 'password' | 'trust';

export interface PgServer {
  host: '127.0.0.1';
  port: number;
  /** The temp directory: holds the cluster (`data/`), the socket and the TLS files. */
  dataDir: string;
  superuser: 'postgres';
  /** Password of the role `app_user` (random per server). */
  password: string;
  user: 'app_user';
  database: 'app';
  auth: PgAuth;
  ssl: boolean;
  /** With ssl: the self-signed server certificate (CN=localhost, SAN localhost + 127.0.0.1). */
  caFile?: string;
  stop(): Promise<void>;
  /** Runs `psql -At` as the superuser over the Unix socket; returns stdout. */
  psqlDirect(sql: string, database?: string): Promise<string>;
}

export interface StartPostgresOptions {
  auth?: PgAuth;
  ssl?: boolean;
  settings?: Record<string, string>;
}

// --- helpers -------------------------------------------------------------------

let postgresIds: Promise<{ uid: number; gid: number }> | undefined;

function postgresUser(): Promise<{ uid: number; gid: number }> {
  postgresIds ??= (async () => {
    const uid = Number((await execFileP('id', ['-u', 'postgres'])).stdout.trim());
    const gid = Number((await execFileP('id', ['-g', 'postgres'])).stdout.trim());
    return { uid, gid };
  })();
  return postgresIds;
}

let templatePromise: Promise<string> | undefined;

/** initdb once per process; servers are copies of this cluster. */
function template(): Promise<string> {
  templatePromise ??= (async () => {
    const { uid, gid } = await postgresUser();
    const dir = await mkdtemp(join(tmpdir(), 'sluice-pg-template-'));
    trackDir(dir);
    await chown(dir, uid, gid);
    await execFileP(
      `${BIN}/initdb`,
      ['-D', join(dir, 'data'), '-U', 'postgres', '-A', 'trust', '-E', 'UTF8', '--locale=C', '-N'],
      { uid, gid, cwd: dir },
    );
    return dir;
  })();
  return templatePromise;
}

function hba(auth: PgAuth): string {
  // The superuser comes in over the Unix socket (trust); everything over TCP
  // uses the mode under test, with or without TLS.
  return [
    'local all all trust',
    `host all all 127.0.0.1/32 ${auth}`,
    `host all all ::1/128 ${auth}`,
    '',
  ].join('\n');
}

async function makeCert(dir: string, uid: number, gid: number): Promise<{ cert: string; key: string }> {
  const cert = join(dir, 'server.crt');
  const key = join(dir, 'server.key');
  await execFileP('openssl', [
    'req', '-x509', '-newkey', 'rsa:2048', '-nodes',
    '-keyout', key, '-out', cert, '-days', '2',
    '-subj', '/CN=localhost',
    '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1',
  ]);
  // PostgreSQL refuses a key readable by group/other or not owned by itself.
  await chown(cert, uid, gid);
  await chown(key, uid, gid);
  await execFileP('chmod', ['0600', key]);
  return { cert, key };
}

interface Postmaster {
  child: ChildProcess;
  port: number;
}

/** Starts the postmaster and resolves once it accepts connections. */
function launch(dataDir: string, dir: string, port: number, settings: Record<string, string>, ids: { uid: number; gid: number }): Promise<Postmaster> {
  const args = ['-D', dataDir, '-p', String(port), '-k', dir];
  for (const [k, v] of Object.entries(settings)) args.push('-c', `${k}=${v}`);
  const child = spawn(`${BIN}/postgres`, args, { uid: ids.uid, gid: ids.gid, cwd: dir, stdio: ['ignore', 'ignore', 'pipe'] });
  track(child, dir);
  return new Promise((resolve, reject) => {
    let log = '';
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`postgres did not become ready in 20 s:\n${log}`));
    }, 20_000);
    const onData = (chunk: Buffer): void => {
      log += chunk.toString('utf8');
      if (log.includes('database system is ready to accept connections')) {
        clearTimeout(timer);
        child.stderr?.off('data', onData);
        // Keep draining stderr so the server never blocks on a full pipe.
        child.stderr?.resume();
        resolve({ child, port });
      }
    };
    child.stderr?.on('data', onData);
    child.once('exit', (code, signal) => {
      release(child);
      clearTimeout(timer);
      reject(Object.assign(new Error(`postgres exited early (${code ?? signal}):\n${log}`), { log }));
    });
  });
}

// --- public --------------------------------------------------------------------

export async function startPostgres(opts: StartPostgresOptions = {}): Promise<PgServer> {
  const auth = opts.auth ?? 'scram-sha-256';
  const ssl = opts.ssl ?? false;
  const ids = await postgresUser();
  const tpl = await template();

  const dir = await mkdtemp(join(tmpdir(), 'sluice-pg-'));
  await chown(dir, ids.uid, ids.gid);
  const dataDir = join(dir, 'data');
  // cp -a keeps owner and the 0700 mode PostgreSQL insists on.
  await execFileP('cp', ['-a', join(tpl, 'data'), dataDir]);
  await writeFile(join(dataDir, 'pg_hba.conf'), hba(auth));
  await chown(join(dataDir, 'pg_hba.conf'), ids.uid, ids.gid);

  const settings: Record<string, string> = {
    listen_addresses: '127.0.0.1',
    fsync: 'off',
    full_page_writes: 'off',
    synchronous_commit: 'off',
    max_connections: '200',
    password_encryption: auth === 'md5' ? 'md5' : 'scram-sha-256',
  };
  let caFile: string | undefined;
  if (ssl) {
    const { cert, key } = await makeCert(dir, ids.uid, ids.gid);
    settings.ssl = 'on';
    settings.ssl_cert_file = cert;
    settings.ssl_key_file = key;
    caFile = cert;
  }
  Object.assign(settings, opts.settings ?? {});

  let pm: Postmaster | undefined;
  for (let attempt = 1; !pm; attempt++) {
    const port = await freePort();
    try {
      pm = await launch(dataDir, dir, port, settings, ids);
    } catch (err) {
      const log = (err as { log?: string }).log ?? '';
      // Another process may have taken the port between our probe and the bind.
      if (attempt < 5 && /could not bind|could not create any TCP\/IP sockets/.test(log)) continue;
      await rm(dir, { recursive: true, force: true });
      throw err;
    }
  }
  const { child, port } = pm;

  const psqlDirect = async (sql: string, database = 'postgres'): Promise<string> => {
    const { stdout } = await execFileP(
      `${BIN}/psql`,
      ['-X', '-At', '-v', 'ON_ERROR_STOP=1', '-h', dir, '-p', String(port), '-U', 'postgres', '-d', database, '-c', sql],
      { env: { ...process.env, PGCONNECT_TIMEOUT: '10' } },
    );
    return stdout;
  };

  // Hex, so it needs no quoting in SQL.
  const password = randomBytes(16).toString('hex');
  await execFileP(`${BIN}/psql`, [
    '-X', '-At', '-v', 'ON_ERROR_STOP=1', '-h', dir, '-p', String(port), '-U', 'postgres', '-d', 'postgres',
    '-c', `CREATE ROLE app_user LOGIN PASSWORD '${password}'`,
    // Separate -c: CREATE DATABASE cannot run inside the implicit transaction of a multi-statement string.
    '-c', 'CREATE DATABASE app OWNER app_user',
  ]);

  let stopped: Promise<void> | undefined;
  const stop = (): Promise<void> => {
    stopped ??= (async () => {
      if (child.exitCode === null && child.signalCode === null) {
        const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
        child.kill('SIGINT'); // fast shutdown: disconnects clients, no waiting on them
        const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
        await exited;
        clearTimeout(timer);
      }
      release(child);
      await rm(dir, { recursive: true, force: true });
    })();
    return stopped;
  };

  const server: PgServer = {
    host: '127.0.0.1',
    port,
    dataDir: dir,
    superuser: 'postgres',
    password,
    user: 'app_user',
    database: 'app',
    auth,
    ssl,
    stop,
    psqlDirect,
  };
  if (caFile) server.caFile = caFile;
  return server;
}

/** True when the PostgreSQL 15 binaries this helper needs are installed. */
export function postgresAvailable(): boolean {
  return existsSync(`${BIN}/postgres`) && existsSync(`${BIN}/initdb`);
}
