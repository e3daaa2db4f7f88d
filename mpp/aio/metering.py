"""Per-unit routes for aiohttp: a metered handler reports what it used through its meter.

    @seller.meter(unit="token", price=2, per=1000, currency="usd", max_units=4000)
    async def complete(request):
        text, tokens = generate(...)
        meter_of(request).report(tokens)
        return web.json_response({"text": text})

and a streaming one charges each chunk before sending it:

    @seller.meter(unit="token", price=2, per=1000, currency="usd", stream=True)
    async def stream(request):
        meter = meter_of(request)
        await meter.start(request)
        for chunk, tokens in generate_stream(...):
            await meter.send(chunk, units=tokens)  # asks for the next voucher in-band when short
        return await meter.finish()

The session bookkeeping itself is the engine's (mpp.engine.sessions); the same handler serves a
buyer that paid by ``charge``, its meter only checking the units against what the charge covered.
"""

from mpp.aio.seller import meter_of
from mpp.engine.meters import ChargeMeter, Meter, SessionMeter, StreamStopped
from mpp.engine.session_close import SESSION_PATH
from mpp.engine.sessions import SessionDesk

__all__ = ["SESSION_PATH", "Meter", "ChargeMeter", "SessionMeter", "StreamStopped", "meter_of", "SessionDesk"]
