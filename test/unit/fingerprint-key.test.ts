import { chmodSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import { FINGERPRINT_KEY_FILE, openFingerprintKey } from '../../src/policy/fingerprint-key.js';

function stateDir(t: Test): string {
  const dir = mkdtempSync(join(tmpdir(), 'sluice-fpkey-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

t.test('the fingerprint key: created once, 0600, the same for every process opening it at once', async (t) => {
  const dir = stateDir(t);
  const keys = await Promise.all(Array.from({ length: 8 }, () => openFingerprintKey(dir)));
  t.equal(new Set(keys.map((k) => k.toString('hex'))).size, 1, 'concurrent first uses agree on one key');
  t.equal(keys[0]!.length, 32);
  const file = join(dir, FINGERPRINT_KEY_FILE);
  t.equal(statSync(file).mode & 0o777, 0o600);
  t.equal(readFileSync(file, 'utf8'), `${keys[0]!.toString('hex')}\n`);
  t.same(await openFingerprintKey(dir), keys[0], 'reopening reads the same key');
});

t.test('a fingerprint key others can read, or that is not 32 bytes of hex, is refused', async (t) => {
  const dir = stateDir(t);
  await openFingerprintKey(dir);
  const file = join(dir, FINGERPRINT_KEY_FILE);
  chmodSync(file, 0o644);
  await t.rejects(openFingerprintKey(dir), { code: 'SLUICE_CONFIG_INVALID', message: /accessible by other users \(mode 644\); run chmod 600/ });
  chmodSync(file, 0o600);
  writeFileSync(file, 'not a key\n');
  await t.rejects(openFingerprintKey(dir), { code: 'SLUICE_CONFIG_INVALID', message: /does not hold 32 bytes of hex; delete it/ });
});
