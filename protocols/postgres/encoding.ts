/**
 * Decoding SQL text sent in the session's client_encoding, so the parser
 * reads the statement the server will read.
 *
 * The startup vetting only lets through encodings in which a quote or a
 * backslash byte is never part of a multibyte character, and the policy
 * refuses any later change of client_encoding; so the encoding a session
 * starts with is the one it keeps, and each of them can be turned into
 * UTF-8 for the parser without moving a single quote. Names are the
 * server's canonical ones, as it reports them in ParameterStatus.
 */
const WHATWG_LABELS: Record<string, string> = {
  UTF8: 'utf-8',
  // SQL_ASCII means "bytes, no encoding": map each byte to one character.
  SQL_ASCII: 'latin1',
  LATIN1: 'iso-8859-1',
  LATIN2: 'iso-8859-2',
  LATIN3: 'iso-8859-3',
  LATIN4: 'iso-8859-4',
  LATIN5: 'iso-8859-9',
  LATIN6: 'iso-8859-10',
  LATIN7: 'iso-8859-13',
  LATIN8: 'iso-8859-14',
  LATIN9: 'iso-8859-15',
  LATIN10: 'iso-8859-16',
  ISO_8859_5: 'iso-8859-5',
  ISO_8859_6: 'iso-8859-6',
  ISO_8859_7: 'iso-8859-7',
  ISO_8859_8: 'iso-8859-8',
  WIN866: 'ibm866',
  WIN874: 'windows-874',
  WIN1250: 'windows-1250',
  WIN1251: 'windows-1251',
  WIN1252: 'windows-1252',
  WIN1253: 'windows-1253',
  WIN1254: 'windows-1254',
  WIN1255: 'windows-1255',
  WIN1256: 'windows-1256',
  WIN1257: 'windows-1257',
  WIN1258: 'windows-1258',
  KOI8R: 'koi8-r',
  KOI8U: 'koi8-u',
  EUC_JP: 'euc-jp',
  EUC_KR: 'euc-kr',
  EUC_CN: 'gb2312',
};

export type SqlDecoder = (bytes: Buffer, start: number, end: number) => string;

const utf8: SqlDecoder = (bytes, start, end) => bytes.toString('utf8', start, end);

/**
 * A decoder for the server-reported client_encoding. An encoding without a
 * decoder here (EUC_TW, EUC_JIS_2004, MULE_INTERNAL) is read byte for byte:
 * every byte of their multibyte characters is >= 0x80, so the ASCII the
 * statement's structure is made of lands in the same places.
 */
export function sqlDecoder(clientEncoding: string | undefined): SqlDecoder {
  const label = WHATWG_LABELS[(clientEncoding ?? 'UTF8').toUpperCase()] ?? 'latin1';
  if (label === 'utf-8') return utf8;
  if (label === 'latin1') return (bytes, start, end) => bytes.toString('latin1', start, end);
  const decoder = new TextDecoder(label);
  return (bytes, start, end) => decoder.decode(bytes.subarray(start, end));
}

/** The value of one ParameterStatus in a run of them (the startup reply), or undefined. */
export function parameterStatusValue(messages: Buffer, name: string): string | undefined {
  let i = 0;
  while (i + 5 <= messages.length) {
    const length = messages.readInt32BE(i + 1);
    const end = i + 1 + length;
    if (messages[i] === 0x53 /* 'S' */) {
      const nul = messages.indexOf(0, i + 5);
      if (nul > 0 && nul < end && messages.toString('utf8', i + 5, nul) === name) {
        return messages.toString('utf8', nul + 1, end - 1);
      }
    }
    i = end;
  }
  return undefined;
}
