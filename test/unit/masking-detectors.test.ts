/**
 * Every built-in detector: true positives (including secrets embedded in
 * JSON, URLs and multi-line text) and near misses that must stay untouched
 * (bad checksums, invalid SSN areas, look-alike numbers).
 */
import t from 'tap';
import { CandidateScanner, DETECTOR_NAMES, cardShape, ibanShape, ipv4Shape, nanpShape } from '../../masking/detectors.js';
import { MaskingEngine } from '../../masking/engine.js';
import type { DetectorName } from '../../masking/types.js';

const key = Buffer.alloc(32, 7);

/** A resizable ArrayBuffer (the scanner makes no word view of its memory; not in this TypeScript lib's typings). */
function resizableBuffer(n: number): ArrayBuffer {
  const Resizable = ArrayBuffer as unknown as new (n: number, opts: { maxByteLength: number }) => ArrayBuffer;
  return new Resizable(n, { maxByteLength: n + 8 });
}

function engineFor(d: DetectorName): MaskingEngine {
  return MaskingEngine.compile([{ name: d, detector: d, strategy: { kind: 'redact', token: '<X>' } }], { hashKey: key });
}

const cases: Record<DetectorName, { hit: Array<[string, string]>; miss: string[] }> = {
  email: {
    hit: [
      ['write to alice.smith+tag@mail.example.co.uk today', 'write to <X> today'],
      ['{"email":"bob@example.com","id":7}', '{"email":"<X>","id":7}'],
      ['mailto:carol@example.org.', 'mailto:<X>.'],
    ],
    miss: ['@handle on twitter', 'user@localhost', 'a@b', 'price 5 @ 10'],
  },
  credit_card: {
    hit: [
      ['card 4111 1111 1111 1111 exp 12/29', 'card <X> exp 12/29'],
      ['4111-1111-1111-1111', '<X>'],
      ['{"pan":"5555555555554444"}', '{"pan":"<X>"}'],
      ['amex 378282246310005.', 'amex <X>.'],
      ['card 4111 1111 1111 1111 2', 'card <X> 2'],
      // Another separator before the next group: a card and its expiry or CVC, not a mixed-up number.
      ['5500-0000-0000-0004 12/27', '<X> 12/27'],
      ['4111-1111-1111-1111 123', '<X> 123'],
    ],
    miss: ['card 4111 1111 1111 1112', 'id 1234567890123456', 'order 4111-1111 1111-1111', '0.4111111111111111', 'n 41111111111111111111111'],
  },
  iban: {
    hit: [
      ['pay to DE89 3704 0044 0532 0130 00 please', 'pay to <X> please'],
      ['GB82WEST12345698765432', '<X>'],
      ['{"iban":"FR1420041010050500013M02606"}', '{"iban":"<X>"}'],
      // After an escaped newline, as jsonb and COPY text write one: the n is the escape's.
      ['{"note": "pay\\nDE89370400440532013000"}', '{"note": "pay\\n<X>"}'],
    ],
    miss: ['DE89 3704 0044 0532 0130 01', 'GB82WEST12345698765433', 'AB12 CDEF GHIJ KLMN'],
  },
  us_ssn: {
    hit: [
      ['ssn 123-45-6789.', 'ssn <X>.'],
      ['{"ssn":"078-05-1120"}', '{"ssn":"<X>"}'],
    ],
    miss: ['000-12-3456', '666-12-3456', '900-12-3456', '123-00-4567', '123-45-0000', '2024-01-15', '1234-56-7890'],
  },
  phone: {
    hit: [
      ['call +44 20 7946 0958 now', 'call <X> now'],
      ['+14155552671', '<X>'],
      ['office (212) 555-0143', 'office <X>'],
      ['cell 415-555-2671.', 'cell <X>.'],
      ['+1 (202) 555-0143', '<X>'],
    ],
    miss: ['id 4155552671', 'date 2024-01-15', 'v1.2.3', '+12345', 'ip 10.123.456.7890x', 'total 123-4567'],
  },
  ipv4: {
    hit: [
      ['from 192.168.1.10 port 5432', 'from <X> port 5432'],
      ['http://10.0.0.1:8080/x', 'http://<X>:8080/x'],
    ],
    miss: ['256.1.1.1', '1.2.3', '1.2.3.4.5', 'v 10.0.0.1234'],
  },
  ipv6: {
    hit: [
      ['addr 2001:db8::8a2e:370:7334 up', 'addr <X> up'],
      ['fe80:0000:0000:0000:0204:61ff:fe9d:f156', '<X>'],
      ['local ::1', 'local <X>'],
    ],
    miss: ['at 12:30:45', 'std::vector', 'a::b::c', 'key :: value'],
  },
  aws_access_key_id: {
    hit: [
      ['AWS_ACCESS_KEY_ID=AKIAIOSFODNN7EXAMPLE', 'AWS_ACCESS_KEY_ID=<X>'],
      ['{"AccessKeyId":"ASIAY34FZKBOKMUTVV7A"}', '{"AccessKeyId":"<X>"}'],
    ],
    miss: ['AKIAIOSFODNN7EXAMPL', 'XAKIAIOSFODNN7EXAMPLE', 'akiaiosfodnn7example'],
  },
  aws_secret_access_key: {
    hit: [
      ['aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY', 'aws_secret_access_key = <X>'],
      ['{"SecretAccessKey": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"}', '{"SecretAccessKey": "<X>"}'],
    ],
    miss: ['wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY alone', 'secret = short', 'aws_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEYX'],
  },
  github_token: {
    hit: [
      [`token ghp_${'A1b2C3d4E5'.repeat(3)}abcdef ok`, 'token <X> ok'],
      [`https://x:github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz@github.com`, 'https://x:<X>@github.com'],
    ],
    miss: ['ghp_short', `ghx_${'a'.repeat(36)}`],
  },
  gitlab_token: { hit: [['PRIVATE-TOKEN: glpat-xK3abcdefghij_123456', 'PRIVATE-TOKEN: <X>']], miss: ['glpat-short'] },
  slack_token: { hit: [['{"token":"xoxb-123456789012-abcdefABCDEF"}', '{"token":"<X>"}']], miss: ['xoxz-123456789012', 'xoxb-1'] },
  stripe_key: {
    hit: [
      ['STRIPE=sk_live_51HabcdEFGHijklMNOP', 'STRIPE=<X>'],
      ['rk_test_abcdefghijKLMNOP ', '<X> '],
    ],
    miss: ['pk_live_51HabcdEFGHijklMNOP', 'sk_live_short', 'ask_live_51HabcdEFGHijklMNOP'],
  },
  google_api_key: {
    hit: [['https://maps.example/api?key=AIzaSyD-1234567890abcdefghijklmnopqrstu&x=1', 'https://maps.example/api?key=<X>&x=1']],
    miss: ['AIzaSyD-1234567890', 'AIza'],
  },
  jwt: {
    hit: [
      [
        'Authorization: Bearer eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c',
        'Authorization: Bearer <X>',
      ],
    ],
    miss: ['eyJub3QiOiJqd3QifQ.eyJ4IjoxfQ.sig', 'eyJhbGciOiJIUzI1NiJ9 only one segment'],
  },
  pem_private_key: {
    hit: [
      ['before\n-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA\nabc+/=\n-----END RSA PRIVATE KEY-----\nafter', 'before\n<X>\nafter'],
      ['-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n(cut here', '<X>'],
      ['-----BEGIN PRIVATE KEY-----\nAAA\n-----END PRIVATE KEY-----', '<X>'],
    ],
    miss: ['-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----', '-----BEGIN PUBLIC KEY-----\nMIIB\n-----END PUBLIC KEY-----'],
  },
  password_assignment: {
    hit: [
      ['password=hunter2&user=bob', 'password=<X>&user=bob'],
      ['{"password": "correct horse", "user": "bob"}', '{"password": "<X>", "user": "bob"}'],
      ["db_passwd: 's3cr3t'", "db_passwd: '<X>'"],
      ['API_KEY=abc123 next', 'API_KEY=<X> next'],
      ['PWD=x;Server=db', 'PWD=<X>;Server=db'],
      ['postgres://app:Sup3rS3cret@db.internal:5432/app', 'postgres://app:<X>@db.internal:5432/app'],
      // As jsonb and COPY text print a newline and a tab: the keyword follows the escape's letter.
      ['{"cfg": "host=db\\npassword=hunter2"}', '{"cfg": "host=db\\npassword=<X>"}'],
      ['host=db\\tpwd=hunter2', 'host=db\\tpwd=<X>'],
      // An escaped quote inside a quoted value is part of it.
      ['{"password": "hun\\"ter2", "user": "bob"}', '{"password": "<X>", "user": "bob"}'],
      ["secret: 'it\\'s mine'", "secret: '<X>'"],
      // A value that ends in a backslash: to the next quote, as before escapes were read.
      ['password="s3cr\\" next', 'password="<X>" next'],
    ],
    miss: ['the password is strong', 'compass=north', 'passport photo', 'keyboard: us', 'npassword=x'],
  },
};

/** A small seeded generator (an LCG): the same "random" inputs on every run, so a failure can be replayed. */
function seededRandom(seed: number): (n: number) => number {
  let state = seed;
  return (n) => {
    state = (state * 1103515245 + 12345) & 0x7fffffff;
    return (state >> 8) % n;
  };
}

t.test('every built-in detector has cases', async (t) => {
  t.same(Object.keys(cases).sort(), [...DETECTOR_NAMES].sort());
});

for (const d of DETECTOR_NAMES) {
  t.test(d, async (t) => {
    const e = engineFor(d);
    for (const [input, want] of cases[d].hit) {
      const counts = new Map<string, number>();
      t.equal(e.maskText(input, counts), want, `masks ${JSON.stringify(input)}`);
      t.ok((counts.get(d) ?? 0) >= 1, 'counted');
      t.equal(e.maskBytes(Buffer.from(input))?.toString(), want, 'bytes path agrees');
    }
    for (const input of cases[d].miss) {
      t.equal(e.maskText(input), undefined, `leaves ${JSON.stringify(input)}`);
      t.equal(e.maskBytes(Buffer.from(input)), undefined, 'bytes path agrees');
    }
  });
}

t.test('all detectors together keep each other\'s results', async (t) => {
  const e = MaskingEngine.compile(
    DETECTOR_NAMES.map((d) => ({ name: d, detector: d, strategy: { kind: 'redact' as const, token: `<${d}>` } })),
    { hashKey: key },
  );
  const counts = new Map<string, number>();
  const out = e.maskText(
    '{"email":"dev@example.com","card":"4111111111111111","ip":"10.1.2.3","note":"call +44 20 7946 0958","aws":"AKIAIOSFODNN7EXAMPLE","n":12345}',
    counts,
  );
  t.equal(out, '{"email":"<email>","card":"<credit_card>","ip":"<ipv4>","note":"call <phone>","aws":"<aws_access_key_id>","n":12345}');
  t.same(Object.fromEntries(counts), { email: 1, credit_card: 1, ipv4: 1, phone: 1, aws_access_key_id: 1 });
  t.equal(e.maskText('{"id":42,"name":"Ada Lovelace","city":"London","ts":"2024-01-15T10:00:00Z"}'), undefined);
});

t.test('byte-level shape helpers', async (t) => {
  const b = (s: string): Buffer => Buffer.from(s);
  const run = (s: string, from: number): [number, number] => {
    let e = from;
    while (e < s.length && s[e]! >= '0' && s[e]! <= '9') e++;
    return [from, e];
  };
  t.ok(cardShape(b('4111 1111 1111 1111'), ...run('4111', 0)), 'grouped Visa test number');
  t.ok(cardShape(b('4111-1111-1111-1111 2'), ...run('4111', 0)), 'a valid cut before an extra group');
  t.notOk(cardShape(b('4111 1111 1111 1112'), ...run('4111', 0)), 'bad Luhn');
  t.notOk(cardShape(b('28003800-0800-9800'), ...run('28003800', 0)), 'uuid digits: no issuer/Luhn cut');
  t.notOk(cardShape(b('41111111111111111111111'), 0, 23), 'more than 19 digits');
  t.ok(ipv4Shape(b('10.0.0.1'), 0, 2));
  t.notOk(ipv4Shape(b('1.2.3'), 0, 1));
  t.notOk(ipv4Shape(b('.1.2.3.4'), 1, 2), 'after a dot');
  t.ok(ibanShape(b('DE89 3704 0044 0532 0130 00'), 2, 4));
  t.notOk(ibanShape(b('AB12 CDEF GH'), 2, 4), 'too short');
  t.ok(nanpShape(b('415-555-2671'), 4, 7));
  t.ok(nanpShape(b('(212) 555-0143'), 6, 9));
  t.notOk(nanpShape(b('b000-2000-d040'), 5, 8), 'exchange must start with 2-9 and follow an area code');
});

t.test('the byte scan never hides a hit: maskBytes (scan, then regexes) equals maskText (regexes) on generated text', async (t) => {
  const all = MaskingEngine.compile(
    DETECTOR_NAMES.map((d) => ({ name: d, detector: d, strategy: { kind: 'redact' as const, token: `<${d}>` } })),
    { hashKey: key },
  );
  const pieces = [
    '4111 1111 1111 1111', '4111-1111-1111-1111', '5555555555554444', '378282246310005', 'DE89 3704 0044 0532 0130 00', 'GB82WEST12345698765432',
    '078-05-1120', '123-45-6789', '+44 20 7946 0958', '+14155552671', '(212) 555-0143', '415-555-2671', '192.168.1.10', '10.0.0.1',
    '2001:db8::8a2e:370:7334', '::1', 'fe80::1', 'AKIAIOSFODNN7EXAMPLE', 'aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY',
    '"SecretAccessKey": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"', `ghp_${'A1b2C3d4E5'.repeat(4)}`, 'github_pat_11ABCDEFG0123456789_abcdefghij',
    'glpat-xK3abcdefghij_123456', 'xoxb-123456789012-abcdef', 'sk_live_51HabcdEFGHijklMNOP', 'rk_test_abcdefghijKLMNOP',
    'AIzaSyD-1234567890abcdefghijklmnopqrstu', 'eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c',
    '-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY-----', 'password=hunter2', 'PWD :\u00a0"x y"', "db_passwd: 's3cr3t'",
    'postgres://app:Sup3rS3cret@db', 'zoë@exämple.org', 'a.b@example.com', 'API_KEY=abc', 'token:\tabc',
  ];
  const noise = ['0', '1', '9', '2', ' ', '-', '.', ':', '=', '@', '+', '_', '"', "'", '(', ')', 'A', 'x', 'T', 'Z', 'é', '\u00a0', '\n', '/', 'abc', '2024-01-15T10:00:00Z', '12:30:45'];
  const rand = seededRandom(7);
  let disagreements = 0;
  const values: Buffer[] = [];
  for (let n = 0; n < 4000; n++) {
    let s = '';
    const parts = 1 + rand(6);
    for (let p = 0; p < parts; p++) {
      if (rand(3) === 0) {
        const piece = pieces[rand(pieces.length)]!;
        // Sometimes damage a piece: cut it or change one character, so near misses are generated too.
        const cut = rand(4) === 0 ? piece.slice(0, rand(piece.length + 1)) : piece;
        s += rand(5) === 0 ? cut.replace(/[0-9a-z]/, noise[rand(noise.length)]!) : cut;
      } else s += noise[rand(noise.length)]!;
    }
    const want = all.maskText(s);
    const got = all.maskBytes(Buffer.from(s));
    if ((want === undefined) !== (got === undefined) || (want !== undefined && got!.toString() !== want)) {
      if (disagreements++ < 5) t.fail(`differs on ${JSON.stringify(s)}: ${JSON.stringify(want)} vs ${JSON.stringify(got?.toString())}`);
    }
    values.push(Buffer.from(s));
  }
  t.equal(disagreements, 0);
  const batch = all.maskValues(values);
  t.ok(batch.every((v, i) => (v === undefined ? all.maskBytes(values[i]!) === undefined : v.equals(all.maskBytes(values[i]!)!))), 'batch equals per value');

  // markRanges over all the values in one buffer, 4 bytes of digits and punctuation between them (a
  // DataRow's length words): the same marks as each value scanned alone, and never a hit unmarked.
  // The long buffer is scanned with the word test, the single values byte by byte.
  const gapBytes = Buffer.from('0@:-');
  const starts = new Int32Array(values.length);
  const ends = new Int32Array(values.length);
  const parts: Buffer[] = [];
  let off = 0;
  values.forEach((v, i) => {
    parts.push(gapBytes, v);
    starts[i] = off + 4;
    ends[i] = off + 4 + v.length;
    off += 4 + v.length;
  });
  const nonEmpty = values.map((v, i) => [v, i] as const).filter(([v]) => v.length > 0).map(([, i]) => i);
  const packed = Buffer.concat(parts);
  const marks = new Uint8Array(nonEmpty.length);
  all.markRanges(packed, Int32Array.from(nonEmpty, (i) => starts[i]!), Int32Array.from(nonEmpty, (i) => ends[i]!), nonEmpty.length, marks);
  let wrong = 0;
  nonEmpty.forEach((i, j) => {
    const alone = new Uint8Array(1);
    all.markRanges(values[i]!, Int32Array.of(0), Int32Array.of(values[i]!.length), 1, alone);
    if (alone[0] !== marks[j] || (marks[j] === 0 && all.maskBytes(values[i]!) !== undefined)) {
      if (wrong++ < 5) t.fail(`markRanges differs on ${JSON.stringify(values[i]!.toString())}: ${marks[j]} in the batch, ${alone[0]} alone`);
    }
  });
  t.equal(wrong, 0, 'markRanges in one buffer equals each value alone');
  // The scanner itself on one long value, word test (4-aligned words of the
  // value's buffer, whatever the value's offset in it) against byte by byte
  // (the same bytes at an odd address of a resizable buffer: no word view).
  const scanner = new CandidateScanner(DETECTOR_NAMES);
  let differ = 0;
  let viaWords = 0;
  for (let i = 0; i + 8 <= values.length; i += 8) {
    const v = Buffer.concat(values.slice(i, i + 8).flatMap((x) => [x, Buffer.from(' lorem ipsum dolor sit amet ')]));
    const aligned = Buffer.allocUnsafeSlow(v.length);
    v.copy(aligned);
    // Exactly v's length: a view running on to the end of its buffer would scan the uninitialised bytes after v as part of the value.
    const odd = Buffer.allocUnsafeSlow(v.length + 3).subarray(1 + (i % 3), 1 + (i % 3) + v.length);
    v.copy(odd);
    const bytewise = Buffer.from(resizableBuffer(v.length + 1), 1, v.length);
    v.copy(bytewise);
    const want = scanner.bits(bytewise);
    if (scanner.any(aligned) !== scanner.any(bytewise) || scanner.bits(aligned) !== want || scanner.bits(odd) !== want) differ++;
    if (v.length >= 64) viaWords++;
  }
  t.ok(viaWords > 100, 'long values, scanned with the word test');
  t.equal(differ, 0, 'the word test answers as the byte loop does');
  // Many values as views of one buffer (the scanner keeps its word view of it from value to value).
  const shared = Buffer.allocUnsafeSlow(values.reduce((a, v) => a + v.length + 1, 0));
  let at = 0;
  let sharedDiffer = 0;
  const views = values.map((v) => {
    v.copy(shared, at);
    const view = shared.subarray(at, at + v.length);
    at += v.length + 1;
    return view;
  });
  views.forEach((view, i) => {
    const alone = Buffer.from(resizableBuffer(view.length));
    values[i]!.copy(alone);
    if (scanner.bits(view) !== scanner.bits(alone)) sharedDiffer++;
  });
  t.equal(sharedDiffer, 0, 'views of one buffer answer as each value alone');
});

t.test('the fast pass skips separators, dashes and letters only where no check could pass: scan then regexes equals regexes alone', async (t) => {
  // The fast pass flags a separator after a digit run only for some run
  // lengths and first digits, and a '-' only after a letter a token ends in
  // or another dash: text dense in exactly those bytes, with every detector's
  // pieces (whole, cut or glued to digits and dashes), each detector alone
  // (hints of one detector) and all together.
  const pieces = [
    '4111 1111 1111 1111', '4111-1111-1111-1111', '378282246310005', '6011 0009 9013 9424', '2221-0000-0000-0009', 'DE89 3704 0044 0532 0130 00',
    '078-05-1120', '123-45-6789', '+44 20 7946 0958', '(212) 555-0143', '415-555-2671', '415.555.2671', '192.168.1.10', '10.0.0.1',
    'glpat-xK3abcdefghij_123456', 'xoxb-123456789012-abcdef', 'xoxp-1234567890-abc',
    '-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY-----', '------BEGIN PRIVATE KEY-----\nx', '-----BEGIN EC PRIVATE KEY-----',
  ];
  const alphabet = ['0', '1', '2', '3', '4', '5', '6', '7', '9', '-', '--', '.', ' ', 't', 'a', 'b', 'p', 'o', 's', 'r', 'x', 'A', 'Z', ':', '(', ')', 'é'];
  const rand = seededRandom(11);
  const engines: Array<[string, MaskingEngine]> = [
    ['all', MaskingEngine.compile(DETECTOR_NAMES.map((d) => ({ name: d, detector: d, strategy: { kind: 'redact' as const, token: `<${d}>` } })), { hashKey: key })],
    ...(['credit_card', 'us_ssn', 'phone', 'ipv4', 'iban', 'gitlab_token', 'slack_token', 'pem_private_key'] as const).map((d) => [d, engineFor(d)] as [string, MaskingEngine]),
  ];
  const disagreements = new Map<string, number>();
  for (let n = 0; n < 6000; n++) {
    let s = '';
    const parts = 1 + rand(12);
    for (let p = 0; p < parts; p++) {
      if (rand(4) === 0) {
        const piece = pieces[rand(pieces.length)]!;
        s += rand(3) === 0 ? piece.slice(rand(piece.length), rand(piece.length + 1)) || piece : piece;
      } else s += alphabet[rand(alphabet.length)]!;
    }
    for (const [name, e] of engines) {
      const want = e.maskText(s);
      const got = e.maskBytes(Buffer.from(s));
      if ((want === undefined) !== (got === undefined) || (want !== undefined && got!.toString() !== want)) {
        disagreements.set(name, (disagreements.get(name) ?? 0) + 1);
        if (disagreements.get(name)! <= 3) t.fail(`${name} differs on ${JSON.stringify(s)}: ${JSON.stringify(want)} vs ${JSON.stringify(got?.toString())}`);
      }
    }
  }
  t.same(Object.fromEntries(disagreements), {});
});
