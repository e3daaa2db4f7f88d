SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS accounts (
    id TEXT PRIMARY KEY,
    currency TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('asset', 'issuance')),
    balance INTEGER NOT NULL,
    CHECK (kind = 'issuance' OR balance >= 0)
);
CREATE TABLE IF NOT EXISTS account_members (
    account_id TEXT NOT NULL REFERENCES accounts(id),
    did TEXT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('owner', 'agent', 'denied')),
    PRIMARY KEY (account_id, did)
);
CREATE TABLE IF NOT EXISTS transfers (
    id TEXT PRIMARY KEY,
    payer TEXT NOT NULL REFERENCES accounts(id),
    payee TEXT NOT NULL REFERENCES accounts(id),
    amount INTEGER NOT NULL CHECK (amount > 0),
    currency TEXT NOT NULL,
    kind TEXT NOT NULL,
    created_at TEXT NOT NULL,
    signer TEXT
);
CREATE TABLE IF NOT EXISTS revocations (
    jti TEXT PRIMARY KEY,
    revoker TEXT NOT NULL,
    revoked_at TEXT NOT NULL,
    token TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS mandate_spend (
    transfer_id TEXT NOT NULL,
    jti TEXT NOT NULL,
    period TEXT NOT NULL,
    amount INTEGER NOT NULL,
    PRIMARY KEY (transfer_id, jti)
);
CREATE INDEX IF NOT EXISTS mandate_spend_by_jti ON mandate_spend (jti, period);
CREATE TABLE IF NOT EXISTS mandate_totals (
    jti TEXT NOT NULL,
    period TEXT NOT NULL,
    spent INTEGER NOT NULL,
    PRIMARY KEY (jti, period)
);
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    payer TEXT NOT NULL REFERENCES accounts(id),
    payee TEXT NOT NULL REFERENCES accounts(id),
    currency TEXT NOT NULL,
    signer TEXT NOT NULL,
    terms TEXT NOT NULL,
    open_cap INTEGER NOT NULL CHECK (open_cap > 0),
    cap INTEGER NOT NULL,
    captured INTEGER NOT NULL DEFAULT 0,
    released INTEGER NOT NULL DEFAULT 0,
    status TEXT NOT NULL CHECK (status IN ('open', 'closed')),
    mandate TEXT,
    realm TEXT,
    opened_at TEXT NOT NULL,
    closed_at TEXT,
    capture_ref TEXT,
    release_ref TEXT,
    CHECK (cap >= open_cap AND captured >= 0 AND released >= 0 AND captured + released <= cap),
    CHECK (status = 'open' OR captured + released = cap)
);
CREATE TABLE IF NOT EXISTS voided (
    transfer_id TEXT PRIMARY KEY,
    voided_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS postings (
    transfer_id TEXT NOT NULL REFERENCES transfers(id),
    account_id TEXT NOT NULL REFERENCES accounts(id),
    amount INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS transfers_by_payer ON transfers (payer, created_at);
CREATE INDEX IF NOT EXISTS transfers_by_payee ON transfers (payee, created_at)
"""
