import t from 'tap';
import { serialize } from 'pg-protocol';
import { Parser } from 'pg-protocol/dist/parser.js';
import type { BackendMessage } from 'pg-protocol/dist/messages.js';
import { PgProtocolError } from '../../protocols/postgres/framer.js';
import {
  Backend,
  Frontend,
  PROTOCOL_3_0,
  SSL_REQUEST_CODE,
  GSSENC_REQUEST_CODE,
  CANCEL_REQUEST_CODE,
  sqlstate,
  parseStartupPacket,
  parsePasswordMessage,
  parseErrorFields,
  errorResponse,
  noticeResponse,
  authenticationCleartextPassword,
  authenticationOk,
  backendKeyData,
  readyForQuery,
  parameterStatus,
  negotiateProtocolVersion,
  cancelRequest,
  sslRequest,
  startupMessage,
  passwordMessage,
  terminate,
} from '../../protocols/postgres/messages.js';
import { ErrorCodes } from '../../src/errors.js';
import { PgBytes } from '../helpers/pg-bytes.js';

/** Everything pg-protocol's own client-side parser makes of `bytes`. */
function parseWithPg(bytes: Buffer): BackendMessage[] {
  const out: BackendMessage[] = [];
  new Parser().parse(bytes, (m) => out.push(m));
  return out;
}

/** A tap subtest, as handed to a `t.test` callback. */
type Test = Parameters<Parameters<typeof t.test>[0]>[0];

/** The single message pg-protocol parses out of `bytes`, as a plain record. */
function pgOne(t: Test, bytes: Buffer): Record<string, unknown> {
  const all = parseWithPg(bytes);
  t.equal(all.length, 1, 'exactly one message');
  return all[0] as unknown as Record<string, unknown>;
}

t.test('backend builders round-trip through pg-protocol', async (t) => {
  const err = pgOne(
    t,
    errorResponse({
      severity: 'FATAL',
      code: sqlstate.INVALID_PASSWORD,
      message: 'sluice: token refused: expired',
      detail: 'exp was 5 minutes ago',
      hint: 'present a fresh token — as the password',
    }),
  );
  t.equal(err.name, 'error');
  t.match(err, {
    severity: 'FATAL',
    code: '28P01',
    message: 'sluice: token refused: expired',
    detail: 'exp was 5 minutes ago',
    hint: 'present a fresh token — as the password',
  });

  const bare = pgOne(t, errorResponse({ severity: 'ERROR', code: sqlstate.INSUFFICIENT_PRIVILEGE, message: 'no' }));
  t.equal(bare.detail, undefined);
  t.equal(bare.hint, undefined);

  const notice = pgOne(t, noticeResponse({ severity: 'WARNING', code: '01000', message: 'token expires in 60 s' }));
  t.match(notice, { name: 'notice', severity: 'WARNING', code: '01000', message: 'token expires in 60 s' });

  t.match(pgOne(t, authenticationCleartextPassword()), { name: 'authenticationCleartextPassword', length: 8 });
  t.match(pgOne(t, authenticationOk()), { name: 'authenticationOk', length: 8 });
  t.match(pgOne(t, backendKeyData(4242, -123456789)), { name: 'backendKeyData', processID: 4242, secretKey: -123456789 });
  // Unsigned values keep their bit pattern.
  t.match(pgOne(t, backendKeyData(0xfffffffe, 1)), { processID: -2, secretKey: 1 });
  t.match(pgOne(t, readyForQuery('I')), { name: 'readyForQuery', status: 'I' });
  t.match(pgOne(t, readyForQuery('T')), { status: 'T' });
  t.match(pgOne(t, readyForQuery(0x45)), { status: 'E' });
  t.match(pgOne(t, parameterStatus('application_name', 'psql ünïcode')), {
    name: 'parameterStatus',
    parameterName: 'application_name',
    parameterValue: 'psql ünïcode',
  });
});

t.test('builders strip NULs from strings', async (t) => {
  const err = pgOne(t, errorResponse({ severity: 'ERROR', code: sqlstate.PROTOCOL_VIOLATION, message: 'a\0b', detail: '\0\0' }));
  t.equal(err.message, 'ab');
  t.equal(err.detail, '');
  t.equal(err.code, '08P01', 'later fields are not shifted');
  t.match(pgOne(t, parameterStatus('x\0', 'y\0z')), { parameterName: 'x', parameterValue: 'yz' });
  t.ok(parsePasswordMessage(passwordMessage('pa\0ss')) === 'pass');
});

t.test('errorResponse sets S, V, C, M, D, H in order and refuses a malformed SQLSTATE', async (t) => {
  const bytes = errorResponse({ severity: 'FATAL', code: '57P03', message: 'm', detail: 'd', hint: 'h' });
  const expected = new PgBytes()
    .char('S').cstring('FATAL')
    .char('V').cstring('FATAL')
    .char('C').cstring('57P03')
    .char('M').cstring('m')
    .char('D').cstring('d')
    .char('H').cstring('h')
    .byte(0)
    .typed('E');
  t.same([...bytes], [...expected]);
  t.same([...parseErrorFields(bytes)], [['S', 'FATAL'], ['V', 'FATAL'], ['C', '57P03'], ['M', 'm'], ['D', 'd'], ['H', 'h']]);
  t.throws(() => errorResponse({ severity: 'ERROR', code: '28p01', message: 'x' }), RangeError);
  t.throws(() => errorResponse({ severity: 'ERROR', code: '2800', message: 'x' }), RangeError);
});

t.test('negotiateProtocolVersion (pg-protocol does not parse it)', async (t) => {
  const bytes = negotiateProtocolVersion(0, ['_pq_.compression', '_pq_.other']);
  const expected = new PgBytes().int32(0).int32(2).cstring('_pq_.compression').cstring('_pq_.other').typed('v');
  t.same([...bytes], [...expected]);
  t.same([...negotiateProtocolVersion(2, [])], [...new PgBytes().int32(2).int32(0).typed('v')]);
});

t.test('frontend builders match pg-protocol serialize', async (t) => {
  t.same([...cancelRequest(1234, -5678)], [...serialize.cancel(1234, -5678)]);
  t.same([...sslRequest()], [...serialize.requestSsl()]);
  t.same([...passwordMessage('hunter2')], [...serialize.password('hunter2')]);
  t.same([...terminate()], [...serialize.end()]);
  // pg-protocol appends client_encoding itself.
  t.same(
    [...startupMessage({ user: 'alice', database: 'app', client_encoding: 'UTF8' })],
    [...serialize.startup({ user: 'alice', database: 'app' })],
  );
  t.same([...startupMessage(new Map([['user', 'u']]))], [...startupMessage({ user: 'u' })]);
  t.throws(() => startupMessage({ '': 'x' }), RangeError);
  t.throws(() => startupMessage({ options: 'x'.repeat(10_000) }), RangeError);
});

t.test('constants', async (t) => {
  t.equal(PROTOCOL_3_0, 3 << 16);
  t.equal(SSL_REQUEST_CODE, (1234 << 16) | 5679);
  t.equal(GSSENC_REQUEST_CODE, (1234 << 16) | 5680);
  t.equal(CANCEL_REQUEST_CODE, (1234 << 16) | 5678);
  const letters: Record<string, string> = {
    Query: 'Q', Parse: 'P', Bind: 'B', Execute: 'E', Describe: 'D', Close: 'C', Sync: 'S', Flush: 'H',
    FunctionCall: 'F', CopyData: 'd', CopyDone: 'c', CopyFail: 'f', PasswordMessage: 'p', Terminate: 'X',
  };
  for (const [name, letter] of Object.entries(letters)) t.equal(Frontend[name as keyof typeof Frontend], letter.charCodeAt(0), `Frontend.${name}`);
  const backend: Record<string, string> = {
    Authentication: 'R', BackendKeyData: 'K', ParameterStatus: 'S', ReadyForQuery: 'Z', ErrorResponse: 'E',
    NoticeResponse: 'N', RowDescription: 'T', DataRow: 'D', CommandComplete: 'C', NegotiateProtocolVersion: 'v',
    NotificationResponse: 'A', CopyInResponse: 'G', CopyOutResponse: 'H', CopyBothResponse: 'W', ParseComplete: '1',
    BindComplete: '2', CloseComplete: '3', NoData: 'n', PortalSuspended: 's', EmptyQueryResponse: 'I',
    ParameterDescription: 't', FunctionCallResponse: 'V', CopyData: 'd', CopyDone: 'c',
  };
  for (const [name, letter] of Object.entries(backend)) t.equal(Backend[name as keyof typeof Backend], letter.charCodeAt(0), `Backend.${name}`);
  for (const [name, code] of Object.entries(sqlstate)) t.match(code, /^[0-9A-Z]{5}$/, `sqlstate.${name}`);
});

// ---------------------------------------------------------------------------
// parseStartupPacket

t.test('parseStartupPacket: the four kinds', async (t) => {
  const startup = parseStartupPacket(serialize.startup({ user: 'alice', database: 'app', options: '-c search_path=x' }));
  t.equal(startup.kind, 'startup');
  if (startup.kind === 'startup') {
    t.equal(startup.majorVersion, 3);
    t.equal(startup.minorVersion, 0);
    t.same([...startup.params], [['user', 'alice'], ['database', 'app'], ['options', '-c search_path=x'], ['client_encoding', 'UTF8']]);
  }
  const minor2 = parseStartupPacket(new PgBytes().int32(PROTOCOL_3_0 | 2).cstring('user').cstring('').byte(0).startup());
  t.match(minor2, { kind: 'startup', majorVersion: 3, minorVersion: 2 });
  if (minor2.kind === 'startup') t.equal(minor2.params.get('user'), '', 'empty values are allowed');
  const noParams = parseStartupPacket(new PgBytes().int32(PROTOCOL_3_0).byte(0).startup());
  t.match(noParams, { kind: 'startup' });
  if (noParams.kind === 'startup') t.equal(noParams.params.size, 0);
  t.same(parseStartupPacket(sslRequest()), { kind: 'ssl' });
  t.same(parseStartupPacket(new PgBytes().int32(GSSENC_REQUEST_CODE).startup()), { kind: 'gssenc' });
  t.same(parseStartupPacket(cancelRequest(77, -1)), { kind: 'cancel', processId: 77, secretKey: -1 });
  t.same(parseStartupPacket(cancelRequest(0xffffffff, 0x7fffffff)), { kind: 'cancel', processId: -1, secretKey: 0x7fffffff });
  const round = parseStartupPacket(startupMessage({ user: 'ü', application_name: '日本' }, 1));
  t.match(round, { kind: 'startup', minorVersion: 1 });
  if (round.kind === 'startup') t.same([...round.params], [['user', 'ü'], ['application_name', '日本']]);
});

t.test('parseStartupPacket refuses malformed packets', async (t) => {
  const v3 = (): PgBytes => new PgBytes().int32(PROTOCOL_3_0);
  const cases: [string, Buffer][] = [
    ['missing terminator', v3().cstring('user').cstring('alice').startup()],
    ['missing terminator, no params', v3().startup()],
    ['value without NUL', v3().cstring('user').string('alice').startup()],
    ['name without value', v3().cstring('user').byte(0).startup()],
    ['name without value or terminator', v3().cstring('user').startup()],
    ['duplicate parameter', v3().cstring('user').cstring('a').cstring('user').cstring('b').byte(0).startup()],
    ['empty name', v3().cstring('').cstring('x').byte(0).startup()],
    ['bytes after terminator', v3().cstring('user').cstring('a').byte(0).byte(0x41).startup()],
    ['invalid UTF-8 in a name', v3().bytes([0xc3, 0x28]).byte(0).cstring('x').byte(0).startup()],
    ['invalid UTF-8 in a value', v3().cstring('user').bytes([0xff, 0xfe]).byte(0).byte(0).startup()],
    ['overlong UTF-8 encoding', v3().cstring('user').bytes([0xc0, 0xaf]).byte(0).byte(0).startup()],
    ['UTF-16 surrogate in UTF-8', v3().cstring('user').bytes([0xed, 0xa0, 0x80]).byte(0).byte(0).startup()],
    ['protocol 2.0', new PgBytes().int32(2 << 16).cstring('user').cstring('a').byte(0).startup()],
    ['protocol 4.0', new PgBytes().int32(4 << 16).byte(0).startup()],
    ['unknown 1234.x request', new PgBytes().int32((1234 << 16) | 9999).startup()],
    ['SSLRequest of 12 bytes', new PgBytes().int32(SSL_REQUEST_CODE).int32(0).startup()],
    ['GSSENCRequest of 9 bytes', new PgBytes().int32(GSSENC_REQUEST_CODE).byte(0).startup()],
    ['CancelRequest of 12 bytes', new PgBytes().int32(CANCEL_REQUEST_CODE).int32(1).startup()],
    ['CancelRequest of 20 bytes', new PgBytes().int32(CANCEL_REQUEST_CODE).int32(1).int32(2).int32(3).startup()],
    ['length word larger than the packet', new PgBytes().int32(SSL_REQUEST_CODE).startup(12)],
    ['length word smaller than the packet', v3().cstring('user').cstring('a').byte(0).startup(9)],
    ['under 8 bytes', new PgBytes().fill(3).startup()],
    ['over 10000 bytes', v3().cstring('options').fill(10_000).byte(0).byte(0).startup()],
  ];
  for (const [name, packet] of cases) {
    t.throws(() => parseStartupPacket(packet), { name: 'PgProtocolError', code: ErrorCodes.PROTOCOL_VIOLATION }, name);
  }
});

t.test('parseStartupPacket error text never quotes a value', async (t) => {
  const secret = 'eyJ-not-for-logs';
  const bad = new PgBytes().int32(PROTOCOL_3_0).cstring('password').string(secret).bytes([0xff]).byte(0).byte(0).startup();
  try {
    parseStartupPacket(bad);
    t.fail('accepted');
  } catch (err) {
    t.ok(err instanceof PgProtocolError);
    t.notMatch((err as Error).message, secret);
    t.match((err as Error).message, /password/, 'names the parameter');
  }
});

// ---------------------------------------------------------------------------
// parsePasswordMessage, parseErrorFields

t.test('parsePasswordMessage', async (t) => {
  const token = 'eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJjaSJ9.sig';
  t.equal(parsePasswordMessage(serialize.password(token)), token);
  t.equal(parsePasswordMessage(serialize.password('')), '');
  t.equal(parsePasswordMessage(passwordMessage('pässwörd')), 'pässwörd');
  const cases: [string, Buffer][] = [
    ['no NUL', new PgBytes().string(token).typed('p')],
    ['empty body', new PgBytes().typed('p')],
    ['bytes after the string', new PgBytes().cstring(token).string('x').typed('p')],
    ['two strings', new PgBytes().cstring(token).cstring('x').typed('p')],
    ['SASLInitialResponse shape', serialize.sendSASLInitialResponseMessage('SCRAM-SHA-256', 'n,,n=,r=abc')],
    ['wrong type', new PgBytes().cstring(token).typed('Q')],
    ['length word mismatch', new PgBytes().cstring(token).typed('p', 5)],
    ['invalid UTF-8', new PgBytes().bytes([0x80]).byte(0).typed('p')],
  ];
  for (const [name, msg] of cases) {
    try {
      parsePasswordMessage(msg);
      t.fail(`${name}: accepted`);
    } catch (err) {
      t.ok(err instanceof PgProtocolError, name);
      t.equal((err as PgProtocolError).code, ErrorCodes.PROTOCOL_VIOLATION);
      t.notMatch((err as Error).message, token, `${name}: the password stays out of the error`);
    }
  }
});

t.test('parseErrorFields', async (t) => {
  const notice = noticeResponse({ severity: 'NOTICE', code: '00000', message: 'hello', hint: 'h' });
  t.same(Object.fromEntries(parseErrorFields(notice)), { S: 'NOTICE', V: 'NOTICE', C: '00000', M: 'hello', H: 'h' });
  t.same(parseErrorFields(new PgBytes().byte(0).typed('E')).size, 0, 'no fields');
  const lenient = parseErrorFields(new PgBytes().char('M').bytes([0xff]).byte(0).byte(0).typed('E'));
  t.equal(lenient.get('M'), '\ufffd', 'invalid UTF-8 decoded leniently');
  const cases: [string, Buffer][] = [
    ['missing terminator', new PgBytes().char('M').cstring('x').typed('E')],
    ['unterminated value', new PgBytes().char('M').string('x').typed('E')],
    ['empty body', new PgBytes().typed('E')],
    ['bytes after terminator', new PgBytes().char('M').cstring('x').byte(0).byte(1).typed('E')],
    ['wrong type', new PgBytes().byte(0).typed('Z')],
    ['length word mismatch', new PgBytes().char('M').cstring('x').byte(0).typed('E', 99)],
  ];
  for (const [name, msg] of cases) {
    t.throws(() => parseErrorFields(msg), { name: 'PgProtocolError', code: ErrorCodes.PROTOCOL_VIOLATION }, name);
  }
});
