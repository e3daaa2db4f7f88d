// Drive mppx 0.11.0's `evm` charge (EIP-3009 authorizations) on a local chain: a seller, a client.
//
// mppx and viem are imported from the folder `make mppx` installs them into (tools/mppx/ pins
// them): $MPP_INTEROP_MPPX, else the repository's .mppx/. Nothing of this project is imported.
//
//   seller --rpc URL --chain-id N --token ADDR --token-name S --token-version S --decimals N
//          --recipient ADDR --settler-key HEX --amount BASE_UNITS [--port 0] [--realm R]
//       One priced route, `GET /paid`: `Mppx.create` + `evm.charge`, bridged to node:http by
//       `Mppx.toNodeListener`, on 127.0.0.1. mppx submits nothing on chain itself: its `settle`
//       hook (below) calls the token's `transferWithAuthorization` with the settler's key (viem),
//       waits for the receipt and returns the transaction hash as the receipt's `reference`.
//       Prints the route's URL as its first line once listening; SIGTERM stops it.
//   pay    --url URL --chain-id N --token ADDR --token-name S --token-version S --payer-key HEX
//       Pays `GET URL` with mppx's client (`Mppx.create` + `evm.charge`, `mppx.fetch`). Prints one
//       JSON line: `status`, `body`, `receipt` (the decoded Payment-Receipt, or null), `errors`.
//
// Amounts on the command line are in the token's base units; mppx's routes take display units.

import { randomBytes } from 'node:crypto'
import * as http from 'node:http'
import { createRequire } from 'node:module'
import { dirname, join } from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'
import { parseArgs } from 'node:util'

const here = dirname(fileURLToPath(import.meta.url))
const folder = process.env.MPP_INTEROP_MPPX || join(here, '..', '..', '.mppx')
const require = createRequire(join(folder, 'package.json'))
const load = async (spec) => import(pathToFileURL(require.resolve(spec)).href)
const viem = await load('viem')
const { privateKeyToAccount } = await load('viem/accounts')

const transferWithAuthorization = [{
  type: 'function', name: 'transferWithAuthorization', stateMutability: 'nonpayable', outputs: [],
  inputs: ['from:address', 'to:address', 'value:uint256', 'validAfter:uint256', 'validBefore:uint256', 'nonce:bytes32',
    'v:uint8', 'r:bytes32', 's:bytes32'].map((p) => ({ name: p.split(':')[0], type: p.split(':')[1] })),
}]

function settler(a) {
  const chain = viem.defineChain({ id: Number(a['chain-id']), name: 'local',
    nativeCurrency: { name: 'Ether', symbol: 'ETH', decimals: 18 }, rpcUrls: { default: { http: [a.rpc] } } })
  const account = privateKeyToAccount(a['settler-key'])
  const transport = viem.http(a.rpc)
  const reader = viem.createPublicClient({ chain, transport })
  const writer = viem.createWalletClient({ account, chain, transport })
  // mppx's `settle` hook: the transaction hash once mined with status success.
  return async ({ payload, request }) => {
    const { r, s, v, yParity } = viem.parseSignature(payload.signature)
    const args = [viem.getAddress(payload.from), viem.getAddress(payload.to), BigInt(payload.value),
      BigInt(payload.validAfter), BigInt(payload.validBefore), payload.nonce, Number(v ?? yParity + 27), r, s]
    const { request: call } = await reader.simulateContract({ account, address: request.currency,
      abi: transferWithAuthorization, functionName: 'transferWithAuthorization', args }) // a revert surfaces here
    const hash = await writer.writeContract(call)
    const receipt = await reader.waitForTransactionReceipt({ hash, pollingInterval: 50 })
    if (receipt.status !== 'success') throw new Error(`transferWithAuthorization reverted: ${hash}`)
    return { reference: hash }
  }
}

async function seller(a) {
  const { Mppx, evm } = await load('mppx/server')
  const server = http.createServer()
  await new Promise((ok) => server.listen(Number(a.port ?? 0), '127.0.0.1', ok))
  const { address, port } = server.address()
  const mppx = Mppx.create({
    realm: a.realm ?? `${address}:${port}`,
    secretKey: a.secret ?? randomBytes(32).toString('base64'),
    methods: [evm.charge({
      currency: a.token, recipient: a.recipient, chainId: Number(a['chain-id']), decimals: Number(a.decimals),
      authorization: { name: a['token-name'], version: a['token-version'] }, settle: settler(a),
    })],
  })
  const route = Mppx.toNodeListener(mppx.charge({ amount: viem.formatUnits(BigInt(a.amount), Number(a.decimals)) }))
  server.on('request', async (req, res) => {
    try {
      if (req.method !== 'GET' || new URL(req.url, 'http://x').pathname !== '/paid') {
        res.statusCode = 404
        return res.end('not found')
      }
      const result = await route(req, res)
      if (result.status === 402) return // mppx wrote the challenge or the refusal
      res.setHeader('content-type', 'application/json')
      res.end(JSON.stringify({ paid: true }))
    } catch (err) {
      console.error(err)
      if (!res.headersSent) res.statusCode = 500
      res.end()
    }
  })
  for (const signal of ['SIGTERM', 'SIGINT']) process.on(signal, () => server.close(() => process.exit(0)))
  console.log(`http://${address}:${port}/paid`)
}

async function pay(a) {
  const { Mppx, evm } = await load('mppx/client')
  const errors = []
  const mppx = Mppx.create({ polyfill: false, methods: [evm.charge({
    account: privateKeyToAccount(a['payer-key']),
    authorization: { name: a['token-name'], version: a['token-version'] }, // the token's EIP-712 domain
    currencies: [a.token], networks: [Number(a['chain-id'])],
  })] })
  mppx.onPaymentFailed?.((event) => errors.push(String(event?.error?.message ?? event)))
  let out
  try {
    const res = await mppx.fetch(a.url)
    const header = res.headers.get('payment-receipt')
    out = { status: res.status, body: await res.text(), errors,
      receipt: header ? JSON.parse(Buffer.from(header, 'base64url').toString()) : null }
  } catch (err) {
    out = { status: null, body: null, receipt: null, errors: [...errors, `${err?.name}: ${err?.message ?? err}`] }
  }
  console.log(JSON.stringify(out))
  return out.status === null ? 1 : 0
}

const options = Object.fromEntries(['rpc', 'chain-id', 'token', 'token-name', 'token-version', 'decimals', 'recipient',
  'settler-key', 'amount', 'port', 'realm', 'secret', 'url', 'payer-key'].map((name) => [name, { type: 'string' }]))
const { values, positionals } = parseArgs({ options, allowPositionals: true })
const required = { seller: ['rpc', 'chain-id', 'token', 'token-name', 'token-version', 'decimals', 'recipient', 'settler-key', 'amount'],
  pay: ['url', 'chain-id', 'token', 'token-name', 'token-version', 'payer-key'] }[positionals[0]]
const missing = (required ?? []).filter((name) => values[name] === undefined)
if (!required || positionals.length !== 1 || missing.length) {
  console.error(`usage: node mppx_evm_driver.mjs seller|pay --option value ... (see the header)` +
    (missing.length ? `; missing: --${missing.join(', --')}` : ''))
  process.exit(2)
}
if (positionals[0] === 'seller') await seller(values)
else process.exitCode = await pay(values)
