/**
 * Which StartupMessage parameters a client may send through Sluice, and what
 * reaches the upstream.
 *
 * The StartupMessage is a list of name/value pairs that PostgreSQL applies as
 * settings before the first query runs. Whatever the gateway forwards there
 * is trusted by the server as much as a SET would be, so only settings that
 * change formatting or resource limits pass. Settings that change who the
 * session is (role, session_authorization), how SQL text is read
 * (standard_conforming_strings, backslash_quote, client_encoding outside the
 * safe set) or what the connection is (replication) are refused: the
 * gateway's later reading of the SQL must be the server's reading.
 *
 * `user` and `database` are labels: identity comes from the token and the
 * target decides the upstream user and database.
 */

/** Settings accepted as top-level startup parameters and inside `options`. */
const HARMLESS_SETTINGS = new Set([
  'application_name',
  'client_encoding',
  'datestyle',
  'timezone',
  'extra_float_digits',
  'intervalstyle',
  'search_path',
  // Accepted only inside `options` by libpq users (PGOPTIONS), but harmless as
  // top-level parameters too: they bound resources or shape output.
  'statement_timeout',
  'lock_timeout',
  'idle_in_transaction_session_timeout',
  'idle_session_timeout',
  'work_mem',
  'maintenance_work_mem',
  'temp_buffers',
  'default_transaction_isolation',
  'default_transaction_read_only',
  'default_transaction_deferrable',
  'bytea_output',
  'client_min_messages',
  'lc_monetary',
  'lc_numeric',
  'lc_time',
  'geqo',
  'jit',
  'random_page_cost',
  'effective_cache_size',
  'enable_seqscan',
  'enable_indexscan',
  'enable_bitmapscan',
  'enable_hashjoin',
  'enable_mergejoin',
  'enable_nestloop',
]);

/** Names that could only come from someone probing the boundary; each gets its own reason. */
const REFUSED_REASONS: Record<string, string> = {
  replication: 'replication connections are not supported through sluice',
  role: 'the session role comes from the target configuration, not the client',
  session_authorization: 'the session user comes from the target configuration, not the client',
  standard_conforming_strings: 'sluice reads SQL with standard_conforming_strings on; it cannot be changed',
  backslash_quote: 'sluice reads SQL with the server default; it cannot be changed',
  escape_string_warning: 'sluice reads SQL with the server default; it cannot be changed',
};

/**
 * Encodings in which neither a quote (0x27) nor a backslash (0x5C) byte can be
 * part of a multibyte character: every multibyte sequence of these uses bytes
 * >= 0x80 only. Keys are PostgreSQL's "clean" encoding names (lowercase,
 * non-alphanumerics removed: see clean_encoding_name() in encnames.c), which
 * is how the server itself looks a client_encoding up.
 */
const SAFE_ENCODINGS = new Set([
  'utf8', 'unicode', 'sqlascii',
  'latin1', 'latin2', 'latin3', 'latin4', 'latin5', 'latin6', 'latin7', 'latin8', 'latin9', 'latin10',
  'iso88591', 'iso88592', 'iso88593', 'iso88594', 'iso88599', 'iso885910', 'iso885913', 'iso885914', 'iso885915', 'iso885916',
  'iso88595', 'iso88596', 'iso88597', 'iso88598',
  'win866', 'alt', 'win874', 'win1250', 'win1251', 'win', 'win1252', 'win1253', 'win1254', 'win1255', 'win1256', 'win1257', 'win1258', 'abc', 'tcvn', 'tcvn5712', 'vscii',
  'windows866', 'windows874', 'windows1250', 'windows1251', 'windows1252', 'windows1253', 'windows1254', 'windows1255', 'windows1256', 'windows1257', 'windows1258',
  'koi8', 'koi8r', 'koi8u',
  'eucjp', 'euccn', 'euckr', 'euctw', 'eucjis2004', 'muleinternal',
]);

/** The encodings whose second bytes overlap ASCII: the gateway and the server could split the same bytes differently. */
const UNSAFE_ENCODINGS = new Set([
  'sjis', 'shiftjis', 'mskanji', 'shiftjis2004', 'windows932', 'win932',
  'big5', 'windows950', 'win950',
  'gbk', 'windows936', 'win936', 'cp936',
  'gb18030',
  'uhc', 'windows949', 'win949', 'cp949',
  'johab',
]);

export function cleanEncodingName(name: string): string {
  return name.toLowerCase().replace(/[^a-z0-9]/g, '');
}

export class StartupParameterRefused extends Error {
  constructor(
    readonly parameter: string,
    readonly reason: string,
  ) {
    super(`startup parameter "${parameter}" is not allowed through sluice: ${reason}`);
    this.name = 'StartupParameterRefused';
  }
}

export interface VettedStartup {
  /** Parameters to send upstream (never user, database, replication). */
  forward: Record<string, string>;
  /** What the client called itself: recorded, never forwarded. */
  labels: { user?: string; database?: string; applicationName?: string };
  /** `_pq_.*` protocol options: answered with NegotiateProtocolVersion as unrecognised, as PostgreSQL does. */
  unrecognizedProtocolOptions: string[];
}

/** Throws StartupParameterRefused naming the first parameter that may not pass. */
export function vetStartupParameters(params: Map<string, string>): VettedStartup {
  const forward: Record<string, string> = {};
  const labels: VettedStartup['labels'] = {};
  const unrecognizedProtocolOptions: string[] = [];
  for (const [name, value] of params) {
    const key = name.toLowerCase();
    if (key === 'user') {
      labels.user = value;
      continue;
    }
    if (key === 'database') {
      labels.database = value;
      continue;
    }
    if (name.startsWith('_pq_.')) {
      unrecognizedProtocolOptions.push(name);
      continue;
    }
    if (key === 'options') {
      const pairs = parseOptions(value);
      if (pairs.length > 0) forward.options = pairs.map(([n, v]) => `-c ${escapeOption(n)}=${escapeOption(v)}`).join(' ');
      continue;
    }
    checkSetting(name, value);
    if (key === 'application_name') labels.applicationName = value;
    forward[name] = value;
  }
  return { forward, labels, unrecognizedProtocolOptions };
}

function checkSetting(name: string, value: string): void {
  const key = name.toLowerCase();
  const refused = REFUSED_REASONS[key];
  if (refused !== undefined) throw new StartupParameterRefused(name, refused);
  if (!HARMLESS_SETTINGS.has(key)) {
    throw new StartupParameterRefused(name, 'only formatting and resource settings pass (see docs/configuration.md, "Startup parameters")');
  }
  if (key === 'client_encoding') checkClientEncoding(name, value);
}

function checkClientEncoding(name: string, value: string): void {
  const clean = cleanEncodingName(value);
  if (UNSAFE_ENCODINGS.has(clean)) {
    throw new StartupParameterRefused(
      name,
      `encoding ${value} can hide a quote or backslash inside a multibyte character; use UTF8`,
    );
  }
  if (!SAFE_ENCODINGS.has(clean)) {
    throw new StartupParameterRefused(name, `unknown or unsupported encoding ${JSON.stringify(value)}; use UTF8`);
  }
}

/**
 * Splits libpq's `options` the way the server does (pg_split_opts: words
 * separated by whitespace, a backslash takes the next character literally)
 * and accepts only `-c name=value`, `-cname=value` and `--name=value`.
 * Returns the pairs, which the caller re-serialises: what reaches the server
 * is exactly what was checked here.
 */
export function parseOptions(options: string): Array<[string, string]> {
  const words = splitOptions(options);
  const pairs: Array<[string, string]> = [];
  for (let i = 0; i < words.length; i++) {
    const word = words[i]!;
    let setting: string | undefined;
    if (word === '-c') setting = words[++i];
    else if (word.startsWith('-c')) setting = word.slice(2);
    else if (word.startsWith('--')) setting = word.slice(2);
    if (setting === undefined || setting.length === 0) {
      throw new StartupParameterRefused('options', `only "-c name=value" settings are accepted, found ${JSON.stringify(word)}`);
    }
    const eq = setting.indexOf('=');
    if (eq <= 0) throw new StartupParameterRefused('options', `expected name=value, found ${JSON.stringify(setting)}`);
    // The server folds '-' to '_' in option names given this way.
    const settingName = setting.slice(0, eq).replace(/-/g, '_');
    const settingValue = setting.slice(eq + 1);
    checkSetting(settingName, settingValue);
    pairs.push([settingName, settingValue]);
  }
  return pairs;
}

function splitOptions(options: string): string[] {
  const words: string[] = [];
  let current = '';
  let inWord = false;
  for (let i = 0; i < options.length; i++) {
    const ch = options[i]!;
    if (ch === '\\' && i + 1 < options.length) {
      current += options[++i];
      inWord = true;
    } else if (/\s/.test(ch)) {
      if (inWord) words.push(current);
      current = '';
      inWord = false;
    } else {
      current += ch;
      inWord = true;
    }
  }
  if (inWord) words.push(current);
  return words;
}

function escapeOption(text: string): string {
  return text.replace(/[\\\s]/g, (c) => `\\${c}`);
}
