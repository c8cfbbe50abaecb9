/**
 * Reading pub/sub elements (protocols/redis/pubsub.ts): names, counts, and
 * the subscriptions the counts add up to, on bytes as Redis 7 sends them.
 */
import t from 'tap';
import { MESSAGE, PubSubKind, Subscriptions, confirmationCount, elementName, pubSubCommand } from '../../protocols/redis/pubsub.js';

const b = (s: string): Buffer => Buffer.from(s, 'latin1');

t.test('elementName reads the first member of an array or a push', async (t) => {
  t.equal(elementName(b('*3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n')), PubSubKind.subscribe);
  t.equal(elementName(b('>3\r\n$12\r\npunsubscribe\r\n$2\r\np*\r\n:0\r\n')), PubSubKind.punsubscribe);
  t.equal(elementName(b('*3\r\n$12\r\nsunsubscribe\r\n$-1\r\n:0\r\n')), PubSubKind.sunsubscribe);
  t.equal(elementName(b('*3\r\n$7\r\nmessage\r\n$1\r\na\r\n$2\r\nhi\r\n')), MESSAGE);
  t.equal(elementName(b('>4\r\n$8\r\npmessage\r\n$2\r\np*\r\n')), MESSAGE, 'a head cut short is enough');
  t.equal(elementName(b('*3\r\n+SUBSCRIBE\r\n')), PubSubKind.subscribe, 'simple strings, any case');
  t.equal(elementName(b('*2\r\n$4\r\npong\r\n$0\r\n\r\n')), undefined, "RESP2's pub/sub pong");
  t.equal(elementName(b('>2\r\n$10\r\ninvalidate\r\n')), undefined, 'another push');
  t.equal(elementName(b('*1\r\n*3\r\n$9\r\nsubscribe\r\n')), undefined, 'nested in an array (EXEC): not top level');
  t.equal(elementName(b('$9\r\nsubscribe\r\n')), undefined, 'a bulk string alone');
  t.equal(elementName(b('*3\r\n$9\r\nsubscr')), undefined, 'a name cut short');
  t.equal(elementName(b('*3\r\n$x\r\nsubscribe\r\n')), undefined, 'a bad length');
});

t.test('confirmationCount reads the integer that ends an element', async (t) => {
  t.equal(confirmationCount(b('\r\n$1\r\na\r\n:12\r\n')), 12);
  t.equal(confirmationCount(b(':0\r\n')), 0);
  t.equal(confirmationCount(b('$1\r\na\r\n')), undefined, 'a bulk string');
  t.equal(confirmationCount(b('a\r\n:\r\n')), undefined, 'no digits');
  t.equal(confirmationCount(b(':-1\r\n')), undefined, 'not a count');
  t.equal(confirmationCount(b(':3')), undefined, 'no CRLF');
});

t.test('pubSubCommand names the six commands, in any case', async (t) => {
  t.equal(pubSubCommand(b('SSUBSCRIBE')), PubSubKind.ssubscribe);
  t.equal(pubSubCommand(b('unSubscribe')), PubSubKind.unsubscribe);
  t.equal(pubSubCommand(b('message')), undefined);
  t.equal(pubSubCommand(b('publish')), undefined);
});

t.test('Subscriptions tells channels from patterns by how the shared count moves', async (t) => {
  const s = new Subscriptions();
  t.notOk(s.any);
  t.equal(s.confirmationsForAll(PubSubKind.unsubscribe), 1, 'nothing to drop: one confirmation, with a null name');
  s.note(PubSubKind.subscribe, 1);
  s.note(PubSubKind.subscribe, 2);
  s.note(PubSubKind.subscribe, 2); // a channel subscribed already
  s.note(PubSubKind.psubscribe, 3);
  s.note(PubSubKind.ssubscribe, 1);
  t.ok(s.any);
  t.equal(s.confirmationsForAll(PubSubKind.unsubscribe), 2, 'two channels');
  t.equal(s.confirmationsForAll(PubSubKind.punsubscribe), 1, 'one pattern');
  t.equal(s.confirmationsForAll(PubSubKind.sunsubscribe), 1, 'one shard channel');
  s.note(PubSubKind.unsubscribe, 2);
  s.note(PubSubKind.unsubscribe, 1);
  s.note(PubSubKind.unsubscribe, 1); // a channel not subscribed
  t.equal(s.confirmationsForAll(PubSubKind.unsubscribe), 1);
  s.note(PubSubKind.punsubscribe, 0);
  t.ok(s.any, 'the shard channel is left');
  s.note(PubSubKind.sunsubscribe, 0);
  t.notOk(s.any, 'nothing left');
  s.note(PubSubKind.subscribe, 1);
  s.clear();
  t.notOk(s.any, 'RESET');
  t.equal(s.confirmationsForAll(PubSubKind.unsubscribe), 1);
});
