/**
 * The PostgreSQL handshake reader holds what a client sends until the
 * session consumes it. Each message is capped by the framer; the reader
 * caps them together, so a client streaming while its token is checked and
 * its upstream login runs cannot grow the gateway's memory, and the stream
 * it cut short can never reach a relay.
 */
import { once } from 'node:events';
import { connect, createServer, type AddressInfo, type Socket } from 'node:net';
import t, { type Test } from 'tap';
import { PgFramer } from '../../protocols/postgres/framer.js';
import { HandshakeReader, MAX_QUEUED_BYTES } from '../../protocols/postgres/handshake-reader.js';
import { startupPacket, typed } from '../helpers/raw-pg.js';

async function pair(t: Test): Promise<{ client: Socket; server: Socket }> {
  const srv = createServer();
  srv.listen(0, '127.0.0.1');
  await once(srv, 'listening');
  const client = connect((srv.address() as AddressInfo).port, '127.0.0.1');
  const [server] = (await once(srv, 'connection')) as [Socket];
  t.teardown(() => {
    client.destroy();
    server.destroy();
    srv.close();
  });
  return { client, server };
}

t.test('more than MAX_QUEUED_BYTES unconsumed is a protocol violation, and reading stops', async (t) => {
  const { client, server } = await pair(t);
  const reader = new HandshakeReader(new PgFramer({ maxMessageBytes: 64 * 1024, startup: true, inspect: () => true }));
  reader.attach(server);
  client.write(startupPacket({ user: 'u', database: 'd' }));
  const q = typed('Q', `SELECT '${'x'.repeat(60 * 1024)}'\0`);
  for (let i = 0; i < Math.ceil((2 * MAX_QUEUED_BYTES) / q.length); i++) client.write(q);
  for (let i = 0; i < 200 && reader.failure === undefined; i++) await new Promise((r) => setTimeout(r, 10));
  t.match(reader.failure?.message, new RegExp(`more than ${MAX_QUEUED_BYTES} bytes sent before the login finished`));
  t.equal(server.isPaused(), true, 'the socket is no longer read');
  t.ok(reader.queued * q.length <= MAX_QUEUED_BYTES + 2 * q.length, `what is held stays near the cap (${reader.queued} messages)`);
});

t.test('a client that sends within the cap is read whole', async (t) => {
  const { client, server } = await pair(t);
  const reader = new HandshakeReader(new PgFramer({ maxMessageBytes: 64 * 1024, startup: true, inspect: () => true }));
  reader.attach(server);
  client.write(startupPacket({ user: 'u', database: 'd' }));
  client.write(typed('p', 'token\0'));
  t.equal((await reader.next()).type, 0, 'the StartupMessage');
  t.equal(String.fromCharCode((await reader.next()).type), 'p');
  t.equal(reader.failure, undefined);
});
