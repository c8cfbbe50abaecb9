/**
 * What a StartupMessage may carry through Sluice: the allowlist, `user` and
 * `database` as labels, libpq `options` parsed the way the server splits
 * them and re-serialised, and the refusals (identity, SQL reading,
 * replication, unknown names, encodings that can hide a quote byte).
 */
import t from 'tap';
import { StartupParameterRefused, parseOptions, vetStartupParameters } from '../../protocols/postgres/startup-params.js';

function vet(params: Record<string, string>): ReturnType<typeof vetStartupParameters> {
  return vetStartupParameters(new Map(Object.entries(params)));
}

/** The parameter name a refusal names, or undefined when it passed. */
function refusedName(params: Record<string, string>): string | undefined {
  try {
    vet(params);
    return undefined;
  } catch (err) {
    if (err instanceof StartupParameterRefused) return err.parameter;
    throw err;
  }
}

t.test('allowed parameters are forwarded; user and database are labels', async (t) => {
  const v = vet({
    user: 'ci-bot',
    database: 'whatever',
    application_name: 'psql',
    client_encoding: 'UTF8',
    DateStyle: 'ISO, MDY',
    TimeZone: 'UTC',
    extra_float_digits: '3',
    IntervalStyle: 'iso_8601',
    search_path: 'app, public',
  });
  t.same(v.forward, {
    application_name: 'psql',
    client_encoding: 'UTF8',
    DateStyle: 'ISO, MDY',
    TimeZone: 'UTC',
    extra_float_digits: '3',
    IntervalStyle: 'iso_8601',
    search_path: 'app, public',
  });
  t.notOk('user' in v.forward, 'user is never forwarded');
  t.notOk('database' in v.forward, 'database is never forwarded');
  t.same(v.labels, { user: 'ci-bot', database: 'whatever', applicationName: 'psql' });
  t.same(v.unrecognizedProtocolOptions, []);
});

t.test('options: -c pairs, backslash escapes, dash folding, re-serialised', async (t) => {
  t.same(parseOptions('-c statement_timeout=5s'), [['statement_timeout', '5s']]);
  t.same(parseOptions('-cstatement_timeout=5s'), [['statement_timeout', '5s']], '-cname=value');
  t.same(parseOptions('--statement-timeout=5s'), [['statement_timeout', '5s']], '--name=value with dashes folded to _');
  t.same(parseOptions('-c lock-timeout=1s'), [['lock_timeout', '1s']], 'dashes folded after -c too');
  t.same(parseOptions('  -c   work_mem=64MB \t -c search_path=a  '), [['work_mem', '64MB'], ['search_path', 'a']], 'any whitespace separates');
  t.same(parseOptions('-c search_path=my\\ schema,public'), [['search_path', 'my schema,public']], 'backslash-space is a literal space');
  t.same(parseOptions('-c application_name=a\\\\b'), [['application_name', 'a\\b']], 'backslash-backslash is one backslash');
  t.same(parseOptions(''), [], 'empty options');

  const v = vet({ user: 'u', options: '-c search_path=my\\ schema -cwork_mem=4MB --lock-timeout=2s' });
  t.equal(v.forward.options, '-c search_path=my\\ schema -c work_mem=4MB -c lock_timeout=2s', 'what reaches the server is exactly what was checked');
  t.same(parseOptions(v.forward.options!), [['search_path', 'my schema'], ['work_mem', '4MB'], ['lock_timeout', '2s']], 're-serialised options parse back to the same pairs');
  t.notOk('options' in vet({ options: '   ' }).forward, 'options with no settings are not forwarded');
});

t.test('options that are not -c name=value are refused', async (t) => {
  for (const bad of ['-d 5', '-c', '-c =x', '-c name', 'statement_timeout=5', '-o something', '--=x']) {
    t.throws(() => parseOptions(bad), StartupParameterRefused, JSON.stringify(bad));
  }
  t.equal(refusedName({ options: '-c role=postgres' }), 'role', 'a refused setting inside options is named');
  t.equal(refusedName({ options: '--session-authorization=postgres' }), 'session_authorization', 'dash folding cannot smuggle a refused name');
  t.throws(() => parseOptions('-c\\ role=postgres'), StartupParameterRefused, 'an escaped space cannot smuggle one either');
});

t.test('identity, SQL reading and replication are refused, with a reason', async (t) => {
  for (const name of ['role', 'session_authorization', 'replication', 'standard_conforming_strings', 'backslash_quote', 'escape_string_warning']) {
    t.equal(refusedName({ user: 'u', [name]: 'x' }), name, `${name} as a parameter`);
    t.equal(refusedName({ user: 'u', options: `-c ${name}=x` }), name, `${name} inside options`);
  }
  try {
    vet({ role: 'postgres' });
  } catch (err) {
    t.type(err, StartupParameterRefused);
    t.match((err as Error).message, /"role"/, 'the message names the parameter');
    t.match((err as StartupParameterRefused).reason, /role/);
  }
});

t.test('unknown names are refused; names are case-insensitive', async (t) => {
  for (const name of ['log_statement', 'shared_preload_libraries', 'session_preload_libraries', 'default_tablespace', 'no_such_thing', 'lc_messages']) {
    t.equal(refusedName({ [name]: 'x' }), name, `${name} is not on the allowlist`);
  }
  t.equal(refusedName({ ROLE: 'postgres' }), 'ROLE', 'ROLE is role');
  t.equal(refusedName({ Replication: 'database' }), 'Replication');
  t.equal(refusedName({ options: '-c Session_Authorization=x' }), 'Session_Authorization');
  t.equal(refusedName({ Client_Encoding: 'SJIS' }), 'Client_Encoding', 'Client_Encoding is checked as client_encoding');
  t.equal(refusedName({ Client_Encoding: 'utf8' }), undefined, 'and passes with a safe encoding');
  t.equal(refusedName({ USER: 'x', DATABASE: 'y' }), undefined, 'USER and DATABASE are labels too');
  t.notOk('USER' in vet({ USER: 'x' }).forward, 'USER is not forwarded');
});

t.test('client_encoding: only encodings where a quote byte cannot hide in a character', async (t) => {
  for (const enc of ['UTF8', 'utf-8', 'UNICODE', 'SQL_ASCII', 'LATIN1', 'ISO-8859-15', 'WIN1252', 'windows-1251', 'KOI8R', 'EUC_JP', 'euc-kr', 'EUC_CN', 'EUC_TW']) {
    t.equal(refusedName({ client_encoding: enc }), undefined, `${enc} passes`);
  }
  for (const enc of ['SJIS', 'Shift_JIS', 'shift-jis', 'MSKANJI', 'SHIFT_JIS_2004', 'WIN932', 'Windows932', 'BIG5', 'Big5', 'WIN950', 'GBK', 'gbk', 'cp936', 'CP936', 'WIN936', 'GB18030', 'UHC', 'cp949', 'WIN949', 'JOHAB']) {
    t.equal(refusedName({ client_encoding: enc }), 'client_encoding', `${enc} is refused`);
    t.equal(refusedName({ options: `-c client_encoding=${enc}` }), 'client_encoding', `${enc} inside options is refused`);
  }
  t.equal(refusedName({ client_encoding: 'no-such-encoding' }), 'client_encoding', 'unknown encodings are refused');
  t.throws(() => vet({ client_encoding: 'SJIS' }), /multibyte/);
});

t.test('_pq_ protocol options are collected as unrecognized, not forwarded', async (t) => {
  const v = vet({ user: 'u', '_pq_.compression': 'on', '_pq_.other': 'x', application_name: 'a' });
  t.same(v.unrecognizedProtocolOptions, ['_pq_.compression', '_pq_.other']);
  t.same(v.forward, { application_name: 'a' });
});
