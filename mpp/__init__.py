"""MPP: machine payments over the HTTP "Payment" authentication scheme.

The names below are the sans-I/O core: wire formats, challenge ids, keys, receipts and the
seller's and buyer's decisions. None of it imports asyncio or aiohttp. The aiohttp seller and
buyer live in ``mpp.aio``; the embedded ledger and stores in ``mpp.ledger`` and ``mpp.stores.payments``.
"""

from mpp.protocol.wire import b64url_decode, b64url_encode, canonical_json, decode_json_b64, encode_json_b64
from mpp.buyer.core import BuyerPolicy, Quote, check_quote, check_transport, origin_of, select_quote, sign_quote, verify_receipt
from mpp.protocol.challenge import MIN_SECRET_BYTES, ChallengeIssuer, compute_challenge_id
from mpp.protocol.digest import content_digest, verify_content_digest
from mpp.protocol.errors import (
    EXTENSION_PROBLEM_BASE,
    PROBLEM_BASE,
    PROBLEM_CLASSES,
    AccessDenied,
    BadRequest,
    BuyerError,
    FormatError,
    InvalidChallenge,
    MalformedCredential,
    MethodUnsupported,
    MPPError,
    NoPayableChallenge,
    OutcomeUnknown,
    ParseError,
    PaymentExpired,
    PaymentFailed,
    PaymentInsufficient,
    PaymentProblem,
    PaymentRequired,
    QuoteRejected,
    ReceiptInvalid,
    RequestInProgress,
    VerificationFailed,
)
from mpp.protocol.headers import (
    AcceptRange,
    format_accept_payment,
    format_challenge,
    format_credential,
    format_receipt,
    parse_accept_payment,
    parse_challenges,
    parse_credential,
    parse_receipt,
)
from mpp.protocol.keys import SignatureInvalid, SigningKey, did_from_public_key, public_jwk, public_key_from_did, verify_signature
from mpp.protocol.models import Challenge, ChargeRequest, Credential, PaymentReceipt, format_rfc3339, parse_rfc3339
from mpp.protocol.receipts import jwks_document, sign_receipt, verify_receipt_jws
from mpp.engine.core import RequestInfo, SellerCore, Verified
from mpp.pricing.prices import Price
from mpp.protocol.challenge import resource_of

__version__ = "0.1.0"

__all__ = [
    "AcceptRange",
    "AccessDenied",
    "BadRequest",
    "BuyerError",
    "BuyerPolicy",
    "Challenge",
    "ChallengeIssuer",
    "ChargeRequest",
    "Credential",
    "EXTENSION_PROBLEM_BASE",
    "FormatError",
    "InvalidChallenge",
    "MIN_SECRET_BYTES",
    "MPPError",
    "MalformedCredential",
    "MethodUnsupported",
    "NoPayableChallenge",
    "OutcomeUnknown",
    "PROBLEM_BASE",
    "PROBLEM_CLASSES",
    "ParseError",
    "PaymentExpired",
    "PaymentFailed",
    "PaymentInsufficient",
    "PaymentProblem",
    "PaymentReceipt",
    "PaymentRequired",
    "Price",
    "Quote",
    "QuoteRejected",
    "ReceiptInvalid",
    "RequestInProgress",
    "RequestInfo",
    "SellerCore",
    "SignatureInvalid",
    "SigningKey",
    "Verified",
    "VerificationFailed",
    "b64url_decode",
    "b64url_encode",
    "canonical_json",
    "check_quote",
    "check_transport",
    "compute_challenge_id",
    "content_digest",
    "decode_json_b64",
    "did_from_public_key",
    "encode_json_b64",
    "format_accept_payment",
    "format_challenge",
    "format_credential",
    "format_receipt",
    "format_rfc3339",
    "jwks_document",
    "origin_of",
    "parse_accept_payment",
    "parse_challenges",
    "parse_credential",
    "parse_receipt",
    "parse_rfc3339",
    "public_jwk",
    "public_key_from_did",
    "resource_of",
    "select_quote",
    "sign_quote",
    "sign_receipt",
    "verify_content_digest",
    "verify_receipt",
    "verify_receipt_jws",
    "verify_signature",
]
