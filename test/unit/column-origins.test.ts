/**
 * Column origins without a server: the catalogue query's filter (escaped
 * globs) and the rule each kind of RowDescription column gets. The real
 * catalogue is exercised in test/integration/masking-pg-columns.test.ts.
 */
import t from 'tap';
import { MaskingEngine } from '../../masking/engine.js';
import { ColumnOrigins, catalogQuery } from '../../protocols/postgres/column-origins.js';

const engine = MaskingEngine.compile(
  [
    { name: 'pw', columns: ['users.password_hash', "o'brien_*"], strategy: { kind: 'redact' } },
    { name: 'vault', columns: ['vault.*'], strategy: { kind: 'redact' } },
  ],
  { hashKey: Buffer.alloc(32, 1) },
);

t.test('the catalogue query fetches only candidate columns, globs escaped for LIKE and SQL', async (t) => {
  const sql = catalogQuery(engine);
  t.match(sql, "a.attname ILIKE 'password\\_hash'");
  t.match(sql, "a.attname ILIKE 'o''brien\\_%'", 'a quote doubled, _ escaped, * as %');
  t.notMatch(sql, /ILIKE '\*'/, 'a table-wide selector adds no column filter');
  const tableOnly = MaskingEngine.compile([{ name: 'v', columns: ['vault.*'], strategy: { kind: 'redact' } }], { hashKey: Buffer.alloc(32, 1) });
  t.match(catalogQuery(tableOnly), 'AND (false)', 'no column part: tables only');
  const unicode = MaskingEngine.compile([{ name: 'u', columns: ['t.größe'], strategy: { kind: 'redact' } }], { hashKey: Buffer.alloc(32, 1) });
  t.match(catalogQuery(unicode), 'AND (true)', 'a non-ASCII glob fetches every column rather than trust case folding');
});

t.test('each column is judged by its origin, by its label where they differ, by name where there is none', async (t) => {
  const origins = ColumnOrigins.fromRows({
    rows: [
      ['100', 'public', 'users', '2', 'password_hash'],
      ['200', 'public', 'orders', '2', 'password_hash'],
      ['300', 'public', 'vault', null, null],
      ['400', 'public', 'plain', null, null],
    ],
  });
  t.equal(origins.size, 4);
  const rule = (label: string, oid: number, attnum: number): string | undefined => origins.ruleFor(engine, label, oid, attnum)?.name;
  t.equal(rule('password_hash', 100, 2), 'pw');
  t.equal(rule('p', 100, 2), 'pw', 'an alias of a protected column');
  t.equal(rule('password_hash', 200, 2), undefined, 'the same name in another table');
  t.equal(rule('password_hash', 100, 5), 'pw', 'a users column the snapshot did not look up (renamed since): its label decides');
  t.equal(rule('password_hash', 400, 3), undefined, 'the same for a table no selector names');
  t.equal(rule('anything', 300, 1), 'vault', 'a table-wide selector');
  t.equal(rule('anything', 400, 1), undefined);
  t.equal(rule('password_hash', 0, 0), 'pw', 'no origin: by name');
  t.equal(rule('password_hash', 999, 1), 'pw', 'a table newer than the snapshot: by name');
  t.equal(rule('x', 0, 0), 'vault', 'no origin under a table-wide selector: masked');
});
