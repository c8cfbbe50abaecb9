/**
 * The shipped examples must stay valid as the config language grows. They
 * name files that exist only on a real deployment (certificates, mounted
 * secrets), so the one kind of problem allowed here is a missing file.
 */
import t from 'tap';
import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ConfigError, parseConfig } from '../../src/config/load.js';

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
const examples = join(root, 'examples');
const env = { APP_DB_PASSWORD: 'x', REDIS_PASSWORD: 'x', STAGING_DB_PASSWORD: 'x', STAGING_REDIS_PASSWORD: 'x' };

const files = readdirSync(examples).filter((f) => f.endsWith('.yaml'));
t.ok(files.length >= 3, 'examples for local dev, CI and agents');
for (const file of files) {
  t.test(file, async (t) => {
    const text = readFileSync(join(examples, file), 'utf8');
    let problems: string[] = [];
    try {
      const config = parseConfig(text, { baseDir: examples, source: join(examples, file), env });
      t.ok(config.targets.length > 0);
      t.ok(config.policies.length > 0);
    } catch (err) {
      if (!(err instanceof ConfigError)) throw err;
      problems = err.problems;
    }
    for (const p of problems) t.match(p, /\(ENOENT\)$/, `only deployment files may be missing: ${p}`);
  });
}
