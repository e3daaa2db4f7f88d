"""A `--pay-with cmd:` program for the tests: pays the `test` method of _static_rail.py with its
fixed payload and declines (exit 3) every other challenge. Its first argument makes it misbehave:
``fail`` exits 1 with a reason on stderr, ``garbage`` prints what is not JSON, ``hang`` never answers."""

import json
import sys
import time

mode = sys.argv[1] if len(sys.argv) > 1 else "pay"
challenge = json.load(sys.stdin)
if mode == "fail":
    sys.exit(print("cannot sign: no key configured for this payer", file=sys.stderr) or 1)
if mode == "garbage":
    sys.exit(print("hello, this is not JSON") or 0)
if mode == "hang":
    time.sleep(120)
if challenge["method"] != "test":
    sys.exit(3)  # not this challenge: ask me about the next one
assert challenge["requestJson"]["amount"] == "7" and challenge["httpMethod"] and challenge["url"], challenge
print(json.dumps({"payload": {"token": "test"}, "source": "did:example:cmd-payer"}))
