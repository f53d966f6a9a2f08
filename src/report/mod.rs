//! Compliance reports and policy impact analysis (filled in once the ledger lands).
