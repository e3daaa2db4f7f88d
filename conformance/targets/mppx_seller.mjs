// An mppx seller: the third-party TypeScript/Node target of the conformance suite.
//
// mppx is installed at run time (by run.py: `npm install` in conformance/targets/mppx, versions
// pinned by its package.json) and imported from there, so nothing of it is committed.
//
// The server is the shape mppx's README shows: `Mppx.create({ methods, secretKey })`, a route
// handler `mppx.charge({ amount, ... })(request)` that answers `{ status: 402, challenge }` or
// `{ status: 200, withReceipt }`, bridged to node:http with mppx's own `Request.toNodeListener`.
// mppx's rails need a chain or Stripe, so the seller prices its routes with one custom method,
// `test`/`charge`, made with `Method.from` + `Method.toServer` as mppx documents custom methods;
// it accepts exactly the payload {"token": "conformance"} and settles nothing.
//
// Replay protection, as mppx documents it: `Mppx.create` takes no store (its config is methods,
// realm, secretKey, transport and a few hooks); in mppx a replay store is a method's option. Its
// Tempo charge takes `store` (an `AtomicStore`, in memory when omitted for paid charges; one
// shared store across instances), and in `broadcast`, its terminal settlement hook, claims a
// key with `Store.tryClaim(store, key, expires)` -- the transaction hash, or for a proof
// credential (nothing on chain, like this method) the challenge id -- until the challenge
// expires, refusing a second use with VerificationFailedError. The test method does the same
// with mppx's `Store.memory()` (its in-memory AtomicStore; Redis, Upstash and Cloudflare KV
// adapters are the shared ones): it claims `test:charge:<challenge id>` until the challenge's
// expiry. Everything else is mppx's default: challenge expiry (5 minutes), problem documents.
//
//   GET  /paid    priced at 1 (test/charge)
//   POST /paid    priced at 1 (mppx has no option to bind a request body digest)
//   GET  /other   priced the same as /paid (a second route, for the route-binding check)
//   POST /other   likewise
//
// Prints one line `ready http://127.0.0.1:PORT` once listening; SIGTERM (or SIGINT) stops it.
//
// Usage: node mppx_seller.mjs [--port N]

import { randomBytes, randomUUID } from 'node:crypto'
import * as http from 'node:http'
import { createRequire } from 'node:module'
import { dirname, join } from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'

// Resolve mppx from conformance/targets/mppx/node_modules, where run.py installs it.
const here = dirname(fileURLToPath(import.meta.url))
const require = createRequire(join(here, 'mppx', 'package.json'))
const load = async (spec) => import(pathToFileURL(require.resolve(spec)).href)
const { Errors, Method, Store, z } = await load('mppx')
const { Mppx, Request: MppxRequest } = await load('mppx/server')

const ACCEPTED_TOKEN = 'conformance'

const testCharge = Method.from({
  name: 'test',
  intent: 'charge',
  schema: {
    credential: { payload: z.object({ token: z.string() }) },
    request: z.object({ amount: z.string(), currency: z.string(), recipient: z.string() }),
  },
})

// The replay store: one per process, as the method's own option (mppx's Tempo charge defaults to
// an in-memory store the same way).
const replayStore = Store.memory()

const testServer = Method.toServer(testCharge, {
  // `broadcast` is mppx's terminal settlement hook (`verify` is deprecated in 0.11).
  async broadcast({ credential }) {
    if (credential.payload.token !== ACCEPTED_TOKEN)
      throw new Errors.VerificationFailedError({ reason: 'unknown token' })
    const { challenge } = credential
    const until = Date.parse(challenge.expires ?? '') || Date.now() + 3600_000
    if (!(await Store.tryClaim(replayStore, `test:charge:${challenge.id}`, until)))
      throw new Errors.VerificationFailedError({ reason: 'Credential has already been used' })
    return {
      method: 'test',
      reference: `test-${randomUUID()}`,
      status: 'success',
      timestamp: new Date().toISOString(),
    }
  },
})

function parsePort(argv) {
  const i = argv.indexOf('--port')
  return i >= 0 ? Number(argv[i + 1]) : 0
}

const port = parsePort(process.argv.slice(2))
const secretKey = process.env.MPP_SECRET_KEY || randomBytes(32).toString('hex')
const quote = { amount: '1', currency: 'usd', recipient: 'acct:mppx-seller' }

const server = http.createServer()
server.listen(port, '127.0.0.1', () => {
  const { address, port: bound } = server.address()
  const realm = `${address}:${bound}`
  const mppx = Mppx.create({ methods: [testServer], realm, secretKey })
  const routes = {
    'GET /paid': mppx.charge({ ...quote, description: 'mppx conformance target, GET' }),
    'POST /paid': mppx.charge({ ...quote, description: 'mppx conformance target, POST' }),
    'GET /other': mppx.charge({ ...quote, description: 'mppx conformance target, GET (other route)' }),
    'POST /other': mppx.charge({ ...quote, description: 'mppx conformance target, POST (other route)' }),
  }

  const handle = async (request) => {
    const url = new URL(request.url)
    if (request.method === 'GET' && url.pathname === '/health') return Response.json({ ok: true })
    const route = routes[`${request.method} ${url.pathname}`]
    if (!route) return new Response('not found', { status: 404 })
    const result = await route(request)
    if (result.status === 402) return result.challenge
    return result.withReceipt(Response.json({ paid: true, method: request.method }))
  }

  server.on('request', MppxRequest.toNodeListener(handle))
  process.stdout.write(`ready http://${address}:${bound}\n`)
})

const stop = () => {
  server.close(() => process.exit(0))
  server.closeAllConnections?.()
  setTimeout(() => process.exit(0), 2000).unref()
}
process.on('SIGTERM', stop)
process.on('SIGINT', stop)
