#!/usr/bin/env node
import { parseArgs } from 'node:util';
import { connect } from 'node:net';
import { readFileSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ConfigError, loadConfig } from '../config/load.js';
import type { Config } from '../config/types.js';
import { DevIssuer, parseDuration, saveDevToken } from '../identity/dev-issuer.js';
import { Gateway } from '../gateway/gateway.js';
import { createLogger, serveLogLevel } from '../log.js';
import { LOG_LEVELS } from '../config/schema.js';
import { isSluiceError } from '../errors.js';
import { approvalsCommand } from './approvals.js';
import { replayCommand } from './replay.js';
import { sessionsCommand, verifyCommand } from './sessions.js';

const USAGE = `Usage: sluice <command> [options]

Commands:
  serve [--config FILE]          run the gateway (default config ./sluice.yaml; without it an
                                 embedded dev default: target "pg" on 127.0.0.1:6432 -> 127.0.0.1:5432)
  token --sub NAME [--group G]... [--ttl 15m] [--claim k=v]... [--audience A] [--config FILE]
                                 print a token from the dev issuer
  check-config [--config FILE]   validate a config file; exit 2 with one line per problem
  approvals list [--status S] | approve ID [--for 15m] | deny ID [--reason R]
                                 decide held statements through the API (--api URL, --token or SLUICE_TOKEN)
  health [--config FILE]         exit 0 when every target's listener accepts TCP connections
                                 (the container healthcheck)
  sessions [--subject S] [--target T] [--since 1h] [--json] [--config FILE]
                                 list recorded sessions from the state dir's index
  replay ID [--json | --raw client|server | --serve PORT [--once]] [--config FILE | --file PATH]
                                 transcript of a recorded session, its raw bytes, or a stand-in
                                 server replaying it to the same client
  verify ID|--all [--json] [--config FILE]
                                 check recordings' CRCs, hash chain and signatures; exit 1 if any fails
  version                        print the version

Exit codes: 0 ok, 1 runtime failure, 2 bad configuration or usage.`;

/** Exit code for a bad config or bad usage, distinct from a runtime failure. */
const EXIT_USAGE = 2;

async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  // A one-shot command's reader may stop early (`sluice sessions --json | head -1`): that
  // ends the command quietly, as it does other command-line tools, instead of an EPIPE
  // stack trace. Not for `serve`, whose stdout is the log and must not stop the gateway.
  if (command !== 'serve') {
    process.stdout.on('error', (err: NodeJS.ErrnoException) => {
      if (err.code === 'EPIPE') process.exit(0);
      throw err;
    });
  }
  switch (command) {
    case 'serve':
      return serve(rest);
    case 'token':
      return token(rest);
    case 'check-config':
      return checkConfig(rest);
    case 'health':
      return health(rest);
    case 'approvals':
      return approvalsCommand(rest);
    case 'sessions':
      return sessionsCommand(rest);
    case 'replay':
      return replayCommand(rest);
    case 'verify':
      return verifyCommand(rest);
    case 'version':
    case '--version':
      process.stdout.write(`${version()}\n`);
      return 0;
    case undefined:
    case 'help':
    case '--help':
    case '-h':
      process.stdout.write(`${USAGE}\n`);
      return command === undefined ? EXIT_USAGE : 0;
    default:
      process.stderr.write(`sluice: unknown command "${command}"\n\n${USAGE}\n`);
      return EXIT_USAGE;
  }
}

async function serve(args: string[]): Promise<number> {
  const { values } = parseArgs({ args, options: { config: { type: 'string', short: 'c' } }, strict: true });
  const config = await loadConfig(values.config);
  // SLUICE_LOG_LEVEL, when set, overrides log.level: more detail for one run without editing the file.
  // Empty counts as unset (a compose file's SLUICE_LOG_LEVEL=${X:-}).
  const level = serveLogLevel(config.log.level);
  if (level === undefined) {
    process.stderr.write(`sluice: SLUICE_LOG_LEVEL must be one of ${LOG_LEVELS.join(', ')}, not "${process.env.SLUICE_LOG_LEVEL}"\n`);
    return 2;
  }
  const logger = createLogger(level);
  const gateway = await Gateway.start(config, { logger });
  const tokenFile = printQuickstart(config, gateway);
  await new Promise<void>((resolve) => {
    const stop = (signal: string): void => {
      logger.info({ signal }, 'shutting down');
      // The dev token goes with the gateway that minted it (it would be valid for up to 15 minutes more).
      void gateway
        .close()
        .then(() => tokenFile)
        .then((file) => (file ? rm(file, { force: true }) : undefined))
        .catch(() => undefined)
        .then(resolve);
    };
    process.once('SIGINT', () => stop('SIGINT'));
    process.once('SIGTERM', () => stop('SIGTERM'));
  });
  return 0;
}

/**
 * On start, show how to connect. With the dev issuer on, a dev token is
 * minted and left in the state dir (saveDevToken), and the psql commands
 * read it from there: the token itself is never written to stderr, which
 * is often a log. Resolves to the token's file, which serve removes when it
 * stops.
 */
function printQuickstart(config: Config, gateway: Gateway): Promise<string | undefined> {
  const lines: string[] = [`sluice ${version()} ready (state dir ${config.stateDir})`];
  return (async () => {
    let password: string | undefined;
    let file: string | undefined;
    if (gateway.devIssuer) {
      try {
        const token = await gateway.devIssuer.mint({ sub: 'dev', groups: ['dev'], ttlSeconds: 900 });
        file = resolve(await saveDevToken(config.stateDir, token));
        password = `PGPASSWORD="$(cat ${shellWord(file)})"`;
      } catch (err) {
        // The gateway runs all the same; only the ready-made commands are missing.
        lines.push(`  (no dev token: ${String(err)}; mint one with: sluice token --sub NAME --group G)`);
      }
    }
    for (const target of config.targets) {
      const { host, port } = gateway.address(target.name);
      if (target.protocol !== 'postgres') {
        lines.push(`  ${target.name} (${target.protocol}) on ${host}:${port}`);
        continue;
      }
      lines.push(`  ${target.name} (postgres) on ${host}:${port}`);
      if (!password) continue;
      const sslmode = target.allowInsecureLoopback ? 'prefer' : 'require';
      lines.push(`    ${password} psql ${shellWord(`host=${host} port=${port} user=dev sslmode=${sslmode}`)}`);
      if (gateway.tls.caFile) {
        const conninfo = `host=localhost port=${port} user=dev sslmode=verify-full sslrootcert=${conninfoValue(gateway.tls.caFile)}`;
        lines.push(`    ${password} psql ${shellWord(conninfo)}`);
      }
    }
    if (password) lines.push('  (the file holds a dev token for sub "dev", valid 15 minutes; mint others with: sluice token --sub NAME --group G)');
    process.stderr.write(`${lines.join('\n')}\n`);
    return file;
  })().catch((err: unknown) => {
    process.stderr.write(`sluice: could not print how to connect: ${String(err)}\n`);
    return undefined;
  });
}

/**
 * `s` as one word for a POSIX shell: in double quotes when nothing in it
 * is special there (the common case, and what the README shows), else in
 * single quotes.
 */
function shellWord(s: string): string {
  if (/^[\w@%+=:,./-]+$/.test(s)) return s;
  if (!/["$`\\!]/.test(s)) return `"${s}"`;
  return `'${s.replace(/'/g, `'\\''`)}'`;
}

/** A libpq conninfo value: quoted when it holds a space, a quote or a backslash. */
function conninfoValue(v: string): string {
  return /^[^\s'\\]+$/.test(v) ? v : `'${v.replace(/[\\']/g, (c) => `\\${c}`)}'`;
}

async function token(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    options: {
      sub: { type: 'string' },
      group: { type: 'string', multiple: true },
      ttl: { type: 'string', default: '15m' },
      claim: { type: 'string', multiple: true },
      audience: { type: 'string' },
      config: { type: 'string', short: 'c' },
    },
    strict: true,
  });
  if (!values.sub) {
    process.stderr.write('sluice token: --sub NAME is required\n');
    return EXIT_USAGE;
  }
  const config = await loadConfig(values.config);
  if (!config.identity.devIssuer) {
    process.stderr.write('sluice token: warning: identity.dev_issuer is false in this config; the gateway will not accept this token\n');
  }
  const claims: Record<string, string> = {};
  for (const pair of values.claim ?? []) {
    const eq = pair.indexOf('=');
    if (eq <= 0) {
      process.stderr.write(`sluice token: --claim expects name=value, got "${pair}"\n`);
      return EXIT_USAGE;
    }
    claims[pair.slice(0, eq)] = pair.slice(eq + 1);
  }
  const ttlSeconds = parseDuration(values.ttl);
  if (ttlSeconds > config.identity.maxTokenLifetimeSeconds) {
    // Minted, it would be refused at every login: say so now, not at the gateway.
    process.stderr.write(
      `sluice token: --ttl ${values.ttl} is longer than identity.max_token_lifetime (${config.identity.maxTokenLifetimeSeconds}s); the gateway would refuse the token\n`,
    );
    return EXIT_USAGE;
  }
  const issuer = await DevIssuer.open(config.stateDir);
  const jwt = await issuer.mint({
    sub: values.sub,
    groups: values.group ?? [],
    ttlSeconds,
    claims,
    ...(values.audience ? { audience: values.audience } : {}),
  });
  process.stdout.write(`${jwt}\n`);
  return 0;
}

async function checkConfig(args: string[]): Promise<number> {
  const { values } = parseArgs({ args, options: { config: { type: 'string', short: 'c' } }, strict: true });
  const config = await loadConfig(values.config);
  process.stdout.write(
    `${config.source ?? 'embedded default config'}: ok (${config.targets.length} target(s), ${config.policies.length} polic${config.policies.length === 1 ? 'y' : 'ies'})\n`,
  );
  return 0;
}

async function health(args: string[]): Promise<number> {
  const { values } = parseArgs({ args, options: { config: { type: 'string', short: 'c' } }, strict: true });
  const config = await loadConfig(values.config);
  const results = await Promise.all(
    config.targets.map(async (target) => {
      // A wildcard listener is reachable on loopback.
      const host = target.listen.host === '0.0.0.0' ? '127.0.0.1' : target.listen.host === '::' ? '::1' : target.listen.host;
      const ok = await canConnect(host, target.listen.port, 2_000);
      process.stdout.write(`${target.name} ${host}:${target.listen.port} ${ok ? 'ok' : 'not accepting connections'}\n`);
      return ok;
    }),
  );
  return results.every(Boolean) ? 0 : 1;
}

function canConnect(host: string, port: number, timeoutMs: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ host, port });
    const done = (ok: boolean): void => {
      socket.destroy();
      resolve(ok);
    };
    socket.setTimeout(timeoutMs, () => done(false));
    socket.once('connect', () => done(true));
    socket.once('error', () => done(false));
  });
}

function version(): string {
  const pkg = JSON.parse(readFileSync(fileURLToPath(new URL('../../../package.json', import.meta.url)), 'utf8')) as { version: string };
  return pkg.version;
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    if (err instanceof ConfigError) {
      process.stderr.write(`sluice: invalid configuration:\n${err.problems.map((p) => `  - ${p}`).join('\n')}\n`);
      process.exitCode = EXIT_USAGE;
    } else if (err instanceof TypeError && (err as { code?: string }).code?.startsWith('ERR_PARSE_ARGS')) {
      process.stderr.write(`sluice: ${err.message}\n\n${USAGE}\n`);
      process.exitCode = EXIT_USAGE;
    } else {
      process.stderr.write(`sluice: ${isSluiceError(err) ? err.message : err instanceof Error ? err.message : String(err)}\n`);
      process.exitCode = 1;
    }
  },
);
