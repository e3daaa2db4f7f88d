// Drive mppx 0.11.0's MCP client (`McpClient.wrap` from mppx/mcp/client) over stdio, paying with
// its `evm` charge (EIP-3009 authorizations) on a local chain.
//
// mppx, viem and the MCP SDK (@modelcontextprotocol/sdk, mppx's optional peer) are imported from
// the folder `make mppx` installs them into (tools/mppx/ pins them): $MPP_INTEROP_MPPX, else the
// repository's .mppx/. Nothing of this project is imported.
//
//   client --chain-id N --token ADDR --token-name S --token-version S --payer-key HEX
//          [--tool NAME] [--arguments JSON] [--unpaid] -- COMMAND [ARG ...]
//       Starts COMMAND as a stdio MCP server (StdioClientTransport, with this process's
//       environment; its stderr passes through), connects an MCP SDK `Client`, wraps it with
//       `McpClient.wrap(client, { methods: [evm.charge(...)] })` and calls the tool: on -32042 (or
//       -32043) carrying `data.challenges`, mppx signs an authorization for a challenge it can pay
//       and retries with the credential in `params._meta`. `--unpaid` leaves the client unwrapped.
//       Prints one JSON line: `{"ok", "result", "receipt", "error", "capabilities", "elapsed_ms"}`
//       -- `result` the tool result's text, `receipt` the `_meta` receipt object (or null), `error`
//       null or `{"type", "message", "code"?, "data"?}`, `capabilities` the server's `experimental`
//       capabilities, `elapsed_ms` the tool call (both legs) in milliseconds.
//
// mppx binds the authorization's nonce by the draft's rule, `keccak256(id || realm)` (our `draft`
// rule), and its challenge schema takes `opaque` only as a string.

import { createRequire } from 'node:module'
import { dirname, join } from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'
import { parseArgs } from 'node:util'

const here = dirname(fileURLToPath(import.meta.url))
const folder = process.env.MPP_INTEROP_MPPX || join(here, '..', '..', '.mppx')
const require = createRequire(join(folder, 'package.json'))
const load = async (spec) => import(pathToFileURL(require.resolve(spec)).href)

const receiptMetaKey = 'org.paymentauth/receipt'

function errorJson(err) {
  const out = { type: err?.name ?? typeof err, message: String(err?.message ?? err) }
  if (typeof err?.code === 'number') out.code = err.code
  if (err?.data !== undefined) out.data = err.data
  if (err?.cause && typeof err.cause.code === 'number') Object.assign(out, { code: err.cause.code, data: err.cause.data })
  return out
}

async function client(a, command) {
  const { Client } = await load('@modelcontextprotocol/sdk/client/index.js')
  const { StdioClientTransport } = await load('@modelcontextprotocol/sdk/client/stdio.js')
  const { McpClient } = await load('mppx/mcp/client')
  const { evm } = await load('mppx/client')
  const { privateKeyToAccount } = await load('viem/accounts')

  const out = { ok: false, result: null, receipt: null, error: null, capabilities: null, elapsed_ms: null }
  const transport = new StdioClientTransport({ command: command[0], args: command.slice(1), env: process.env,
    stderr: 'inherit' })
  const mcp = new Client({ name: 'mppx-mcp-interop', version: '0.0.0' })
  try {
    await mcp.connect(transport)
    out.capabilities = mcp.getServerCapabilities()?.experimental ?? null
    if (!a.unpaid) {
      McpClient.wrap(mcp, { methods: [evm.charge({
        account: privateKeyToAccount(a['payer-key']),
        authorization: { name: a['token-name'], version: a['token-version'] }, // the token's EIP-712 domain
        currencies: [a.token], networks: [Number(a['chain-id'])],
      })] })
    }
    const started = performance.now()
    try {
      const result = await mcp.callTool({ name: a.tool ?? 'premium_echo', arguments: JSON.parse(a.arguments ?? '{"text":"hello"}') })
      const texts = (result.content ?? []).filter((block) => block.type === 'text').map((block) => block.text)
      Object.assign(out, { ok: !result.isError, result: texts.join('\n'), receipt: result._meta?.[receiptMetaKey] ?? null })
    } catch (err) {
      out.error = errorJson(err)
    }
    out.elapsed_ms = Math.round((performance.now() - started) * 10) / 10
  } catch (err) {
    out.error = errorJson(err)
  } finally {
    await mcp.close().catch(() => {})
  }
  console.log(JSON.stringify(out))
  return out.ok ? 0 : 1
}

const argv = process.argv.slice(2)
const dash = argv.indexOf('--')
const command = dash < 0 ? [] : argv.slice(dash + 1)
const options = Object.fromEntries(['chain-id', 'token', 'token-name', 'token-version', 'decimals', 'payer-key', 'tool',
  'arguments'].map((name) => [name, { type: 'string' }]))
options.unpaid = { type: 'boolean' }
const { values, positionals } = parseArgs({ args: dash < 0 ? argv : argv.slice(0, dash), options, allowPositionals: true })
const required = ['chain-id', 'token', 'token-name', 'token-version', 'payer-key']
const missing = required.filter((name) => values[name] === undefined)
if (positionals.length !== 1 || positionals[0] !== 'client' || missing.length || !command.length) {
  console.error('usage: node mppx_mcp_driver.mjs client --option value ... -- COMMAND [ARG ...] (see the header)' +
    (missing.length ? `; missing: --${missing.join(', --')}` : '') + (command.length ? '' : '; missing: -- COMMAND'))
  process.exit(2)
}
process.exitCode = await client(values, command)
