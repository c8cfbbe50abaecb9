import t from 'tap';
import { ScramClient } from '../../protocols/postgres/scram.js';
import { ErrorCodes } from '../../src/errors.js';

// RFC 7677 section 3.
const CLIENT_NONCE = 'rOprNGfwEbeRWgbNEkqO';
const SERVER_FIRST = 'r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096';
const CLIENT_FINAL =
  'c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=';
const SERVER_FINAL = 'v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=';

function vectorClient(): ScramClient {
  return new ScramClient('pencil', { nonce: CLIENT_NONCE, username: 'user' });
}

t.test('RFC 7677 test vector', async (t) => {
  const c = vectorClient();
  t.equal(c.clientFirstMessage(), 'n,,n=user,r=rOprNGfwEbeRWgbNEkqO');
  t.equal(await c.handleServerFirst(SERVER_FIRST), CLIENT_FINAL);
  t.doesNotThrow(() => c.verifyServerFinal(SERVER_FINAL));
  t.equal(c.serverVerified, true);
});

t.test('PostgreSQL form: empty user name, random nonce', async (t) => {
  const a = new ScramClient('pw').clientFirstMessage();
  const b = new ScramClient('pw').clientFirstMessage();
  t.match(a, /^n,,n=,r=[\x21-\x2b\x2d-\x7e]{20,}$/);
  t.not(a, b, 'nonces differ');
});

t.test('server signature mismatch throws UPSTREAM_AUTH_FAILED', async (t) => {
  const c = vectorClient();
  c.clientFirstMessage();
  await c.handleServerFirst(SERVER_FIRST);
  const wrong = 'v=' + Buffer.alloc(32, 1).toString('base64');
  t.throws(() => c.verifyServerFinal(wrong), { name: 'SluiceError', code: ErrorCodes.UPSTREAM_AUTH_FAILED });
  t.equal(c.serverVerified, false);
  // A truncated signature is a mismatch too, not a crash in timingSafeEqual.
  const c2 = vectorClient();
  c2.clientFirstMessage();
  await c2.handleServerFirst(SERVER_FIRST);
  t.throws(() => c2.verifyServerFinal('v=AAAA'), { name: 'SluiceError', code: ErrorCodes.UPSTREAM_AUTH_FAILED });
});

t.test('server error attribute throws', async (t) => {
  const c = vectorClient();
  c.clientFirstMessage();
  await c.handleServerFirst(SERVER_FIRST);
  t.throws(() => c.verifyServerFinal('e=invalid-proof'), {
    name: 'SluiceError',
    code: ErrorCodes.UPSTREAM_AUTH_FAILED,
    message: /invalid-proof/,
  });
});

t.test('wrong password yields a different proof', async (t) => {
  const c = new ScramClient('pencil2', { nonce: CLIENT_NONCE, username: 'user' });
  c.clientFirstMessage();
  t.not(await c.handleServerFirst(SERVER_FIRST), CLIENT_FINAL);
  t.throws(() => c.verifyServerFinal(SERVER_FINAL));
});

t.test('malformed server-first-message is refused', async (t) => {
  const cases: Array<[string, string]> = [
    ['nonce not extending ours', 'r=someoneelse123,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096'],
    ['nonce equal to ours', `r=${CLIENT_NONCE},s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096`],
    ['missing salt', `r=${CLIENT_NONCE}xyz,i=4096`],
    ['salt not base64', `r=${CLIENT_NONCE}xyz,s=@@@,i=4096`],
    ['zero iterations', `r=${CLIENT_NONCE}xyz,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=0`],
    ['non-numeric iterations', `r=${CLIENT_NONCE}xyz,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=abc`],
    ['huge iterations', `r=${CLIENT_NONCE}xyz,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=999999999`],
    ['mandatory extension', `m=ext,r=${CLIENT_NONCE}xyz,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096`],
    ['garbage', 'hello'],
  ];
  for (const [name, msg] of cases) {
    const c = vectorClient();
    c.clientFirstMessage();
    await t.rejects(c.handleServerFirst(msg), { name: 'SluiceError', code: ErrorCodes.UPSTREAM_PROTOCOL }, name);
  }
});

t.test('out-of-order calls are refused', async (t) => {
  const c = vectorClient();
  await t.rejects(c.handleServerFirst(SERVER_FIRST), { name: 'SluiceError', code: ErrorCodes.UPSTREAM_PROTOCOL });
  t.throws(() => c.verifyServerFinal(SERVER_FINAL), { name: 'SluiceError', code: ErrorCodes.UPSTREAM_PROTOCOL });
});

t.test('password is NFKC-normalised (SASLprep approximation)', async (t) => {
  // U+2163 ROMAN NUMERAL FOUR normalises to "IV" under NFKC.
  const a = new ScramClient('\u2163', { nonce: CLIENT_NONCE, username: 'user' });
  const b = new ScramClient('IV', { nonce: CLIENT_NONCE, username: 'user' });
  a.clientFirstMessage();
  b.clientFirstMessage();
  t.equal(await a.handleServerFirst(SERVER_FIRST), await b.handleServerFirst(SERVER_FIRST));
});
