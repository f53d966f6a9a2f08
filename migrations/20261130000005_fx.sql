-- Foreign currency (SPEC §12.3): rates are ledger events (`fx_rate_set`); this is the
-- latest rate per pair, a projection like the others.
CREATE TABLE fx_rate (
    pair   TEXT PRIMARY KEY,            -- `USD/BRL`: BRL per USD
    rate   NUMERIC     NOT NULL CHECK (rate > 0),
    set_at TIMESTAMPTZ NOT NULL,
    seq    BIGINT      NOT NULL
);
GRANT SELECT, INSERT, UPDATE, DELETE ON fx_rate TO spendguard_service;

-- An authorization of a foreign-currency intent is kept in the intent's currency
-- (settlements come in it); its usage counts converted at the decision's rate.
ALTER TABLE authorization_state ADD COLUMN fx_rate NUMERIC, ADD COLUMN usage_currency TEXT;
-- A waiting foreign-currency intent reserves the converted amount; approval opens its
-- authorization in the intent's own amount and currency.
ALTER TABLE pending_approval ADD COLUMN fx_rate NUMERIC, ADD COLUMN intent_amount NUMERIC,
    ADD COLUMN intent_currency TEXT;
