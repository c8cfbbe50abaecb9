/**
 * What a Redis session's recording keeps of client bytes the relay never
 * framed (the session ended before its relay started, or mid-command): the
 * complete commands, credentials scrubbed; never the incomplete tail, which
 * may be a token cut short.
 */
import t from 'tap';
import { scrubUnframed } from '../../protocols/redis/session.js';

const resp = (...args: string[]): string => `*${args.length}\r\n${args.map((a) => `$${Buffer.byteLength(a)}\r\n${a}\r\n`).join('')}`;
const LIMIT = 512 * 1024 * 1024;

t.test('complete commands kept; AUTH and HELLO AUTH scrubbed', async (t) => {
  const bytes = Buffer.from(resp('SET', 'k', 'v') + resp('AUTH', 'secret-token') + resp('HELLO', '3', 'AUTH', 'me', 'other-secret') + resp('PING'));
  const kept = scrubUnframed(bytes, LIMIT).toString('latin1');
  t.notMatch(kept, /secret/, 'no credential kept');
  t.equal(kept, resp('SET', 'k', 'v') + resp('AUTH', '[redacted]') + resp('HELLO', '3', 'AUTH', 'me', '[redacted]') + resp('PING'));
});

t.test('an incomplete command at the end is dropped, whatever it is', async (t) => {
  const auth = resp('AUTH', 'secret-token');
  for (let cut = 1; cut < auth.length; cut++) {
    const kept = scrubUnframed(Buffer.from(resp('GET', 'k') + auth.slice(0, cut)), LIMIT).toString('latin1');
    if (kept !== resp('GET', 'k')) {
      t.fail(`cut at ${cut}: kept ${JSON.stringify(kept)}`);
      return;
    }
  }
  t.equal(scrubUnframed(Buffer.from('AUTH secret-tok'), LIMIT).length, 0, 'an inline AUTH (Sluice refuses inline commands)');
  t.equal(scrubUnframed(Buffer.from(resp('SET', 'k', 'v').slice(0, 10)), LIMIT).length, 0, 'any other incomplete command too');
});

t.test('bytes that are not RESP: what came before them is kept, nothing after', async (t) => {
  const kept = scrubUnframed(Buffer.from(resp('GET', 'a') + '*2\r\n$x\r\n' + resp('AUTH', 'secret-token')), LIMIT).toString('latin1');
  t.equal(kept, resp('GET', 'a'));
});
