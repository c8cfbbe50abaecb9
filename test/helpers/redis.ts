/**
 * Spawns a real, throw-away redis-server for tests.
 *
 * Each server gets a fresh temp directory holding its generated config (and
 * TLS material), no persistence, a random `requirepass` for the `default`
 * user and an ACL user `app` with its own random password. The config sets
 * `enable-debug-command yes` so tests can use DEBUG PROTOCOL to obtain every
 * RESP3 type from the real server.
 *
 * The port comes from the bind-to-0 trick; another process can grab it
 * between our close and Redis' bind, so an "Address already in use" exit is
 * retried with a new port.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { freePort, release, track } from './children.js';

const execFileP = promisify(execFile);

export interface RedisServer {
  host: '127.0.0.1';
  port: number;
  /** requirepass: the password of the `default` user. */
  password: string;
  aclUser: 'app';
  aclPassword: string;
  /** With `tls: true`: the TLS port and the CA that signed the server certificate (SAN 127.0.0.1, localhost). */
  tls?: { port: number; caFile: string };
  stop(): Promise<void>;
  /** Runs redis-cli as the default user against the plain port; returns stdout. */
  cli(args: string[]): Promise<string>;
}

export interface StartRedisOptions {
  tls?: boolean;
  /** More redis.conf directives, e.g. `rename-command HELLO ""` for a server without HELLO. */
  config?: string[];
}

// --- helpers -------------------------------------------------------------------

function secret(): string {
  return randomBytes(18).toString('base64url');
}

/** A CA and a server certificate it signs (SAN IP:127.0.0.1, DNS:localhost). */
async function makeCerts(dir: string): Promise<{ ca: string; cert: string; key: string }> {
  const ca = join(dir, 'ca.crt');
  const caKey = join(dir, 'ca.key');
  const cert = join(dir, 'server.crt');
  const key = join(dir, 'server.key');
  const csr = join(dir, 'server.csr');
  const ext = join(dir, 'server.ext');
  const openssl = async (args: string[]): Promise<void> => {
    try {
      await execFileP('openssl', args, { cwd: dir });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
        throw new Error('startRedis({ tls: true }) needs the openssl CLI on PATH to generate a test certificate');
      }
      throw err;
    }
  };
  await openssl(['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '2', '-subj', '/CN=sluice-test-ca',
    '-keyout', caKey, '-out', ca]);
  await openssl(['req', '-newkey', 'rsa:2048', '-nodes', '-subj', '/CN=localhost', '-keyout', key, '-out', csr]);
  await writeFile(ext, 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n');
  await openssl(['x509', '-req', '-in', csr, '-CA', ca, '-CAkey', caKey, '-CAcreateserial', '-days', '2',
    '-extfile', ext, '-out', cert]);
  return { ca, cert, key };
}

/** Sends PING over a raw socket; resolves when anything RESP comes back (+PONG or -NOAUTH). */
function pingOnce(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const sock = connect(port, '127.0.0.1');
    const done = (ok: boolean): void => {
      sock.destroy();
      resolve(ok);
    };
    sock.setTimeout(1000, () => done(false));
    sock.once('error', () => done(false));
    sock.once('connect', () => sock.write('*1\r\n$4\r\nPING\r\n'));
    sock.once('data', (d: Buffer) => done(d[0] === 0x2b /* '+' */ || d[0] === 0x2d /* '-' */));
  });
}

interface Spawned {
  child: ChildProcess;
  exited: Promise<void>;
}

/** Starts redis-server with `config`; resolves once PING answers, rejects (with its log) if it exits first. */
async function launch(configFile: string, port: number): Promise<Spawned> {
  const child = spawn('redis-server', [configFile], { stdio: ['ignore', 'pipe', 'pipe'] });
  let log = '';
  child.stdout!.on('data', (d: Buffer) => {
    if (log.length < 64 * 1024) log += d.toString();
  });
  child.stderr!.on('data', (d: Buffer) => {
    if (log.length < 64 * 1024) log += d.toString();
  });
  let exitedFlag = false;
  const exited = new Promise<void>((resolve) => {
    child.once('exit', () => {
      exitedFlag = true;
      resolve();
    });
  });
  child.once('error', () => {
    exitedFlag = true;
  });
  const deadline = Date.now() + 15_000;
  while (Date.now() < deadline) {
    if (exitedFlag) {
      const err = new Error(`redis-server exited during startup:\n${log}`);
      (err as Error & { addrInUse?: boolean }).addrInUse = /Address already in use/i.test(log);
      throw err;
    }
    if (await pingOnce(port)) return { child, exited };
    await new Promise((r) => setTimeout(r, 50));
  }
  child.kill('SIGKILL');
  throw new Error(`redis-server did not answer PING within 15 s:\n${log}`);
}

export async function startRedis(opts: StartRedisOptions = {}): Promise<RedisServer> {
  const dir = await mkdtemp(join(tmpdir(), 'sluice-redis-'));
  const password = secret();
  const aclPassword = secret();
  const certs = opts.tls ? await makeCerts(dir) : undefined;

  for (let attempt = 0; ; attempt++) {
    const port = await freePort();
    const tlsPort = certs ? await freePort() : 0;
    const config = [
      `port ${port}`,
      'bind 127.0.0.1',
      `dir ${dir}`,
      'save ""',
      'appendonly no',
      'daemonize no',
      'logfile ""',
      'loglevel warning',
      'enable-debug-command yes',
      `requirepass ${password}`,
      `user app on >${aclPassword} ~* &* +@all`,
      ...(certs
        ? [
            `tls-port ${tlsPort}`,
            `tls-cert-file ${certs.cert}`,
            `tls-key-file ${certs.key}`,
            `tls-ca-cert-file ${certs.ca}`,
            'tls-auth-clients no',
          ]
        : []),
      ...(opts.config ?? []),
      '',
    ].join('\n');
    const configFile = join(dir, 'redis.conf');
    await writeFile(configFile, config, { mode: 0o600 });

    let spawned: Spawned;
    try {
      spawned = await launch(configFile, port);
    } catch (err) {
      if ((err as { addrInUse?: boolean }).addrInUse && attempt < 5) continue;
      await rm(dir, { recursive: true, force: true });
      throw err;
    }
    const { child, exited } = spawned;
    track(child, dir);

    const server: RedisServer = {
      host: '127.0.0.1',
      port,
      password,
      aclUser: 'app',
      aclPassword,
      ...(certs ? { tls: { port: tlsPort, caFile: certs.ca } } : {}),
      async stop() {
        if (!release(child)) return;
        child.kill('SIGTERM');
        const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
        await exited;
        clearTimeout(timer);
        await rm(dir, { recursive: true, force: true });
      },
      async cli(args: string[]) {
        // The password goes through the environment, not argv (ps would show it).
        const { stdout } = await execFileP('redis-cli', ['-h', '127.0.0.1', '-p', String(port), '--no-auth-warning', ...args], {
          env: { ...process.env, REDISCLI_AUTH: password },
          maxBuffer: 64 * 1024 * 1024,
        });
        return stdout;
      },
    };
    return server;
  }
}
