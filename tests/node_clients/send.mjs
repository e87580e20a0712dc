// Sends one call of every type with Segment's official Node.js library, then flushes.
// usage: node send.mjs <host> <writeKey> <prefix>   (messageIds are <prefix>-<type>)
import { Analytics } from '@segment/analytics-node'

const [host, writeKey, prefix] = process.argv.slice(2)
const analytics = new Analytics({ writeKey, host, maxEventsInBatch: 10, flushInterval: 100, maxRetries: 0 })
const errors = []
analytics.on('error', (err) => errors.push(String(err?.reason ?? err?.message ?? err)))
const userId = `${prefix}-user`
const id = (t) => `${prefix}-${t}`
analytics.identify({ userId, messageId: id('identify'), traits: { email: 'node@example.com', firstName: 'Node', plan: 'pro' } })
analytics.track({ userId, messageId: id('track'), event: 'User Registered', properties: { plan: 'Pro Annual' } })
analytics.group({ userId, messageId: id('group'), groupId: 'acme', traits: { name: 'Acme' } })
analytics.page({ userId, messageId: id('page'), name: 'Home', properties: { url: 'https://example.com/' } })
analytics.screen({ userId, messageId: id('screen'), name: 'Dashboard' })
analytics.alias({ userId, previousId: `${prefix}-anon`, messageId: id('alias') })
await analytics.closeAndFlush({ timeout: 10000 })
console.log(JSON.stringify({ errors }))
process.exit(errors.length ? 1 : 0)
