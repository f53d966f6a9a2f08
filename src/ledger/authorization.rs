//! One authorization's money (SPEC §11): what an ALLOWed (or approved) intent
//! authorized, and what captures, voids, refunds and expiry did to it. Pure: the
//! ledger's steps call [`AuthorizationState::settle`] / [`AuthorizationState::expire`]
//! and record the state they return; the fold only copies it into the projection.
//!
//! ```text
//!   authorized ──CAPTURE (part)──▶ authorized, partly captured ──CAPTURE final / VOID rest──▶ final
//!       │  └─VOID (part)─▶ (less outstanding)                     │
//!       └──authorizationTtl passes──▶ expired (remainder released) ──CAPTURE──▶ forced capture
//!   REFUND (≤ captured − refunded) at any time after a capture; restores usage only with `refunds: restore`
//! ```

use crate::settlement::SettlementType;
use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// The money of one authorization. Invariants (asserted by [`Self::check`]):
/// `captured + voided ≤ authorized`, `refunded ≤ captured`, `restored ≤ refunded`,
/// every amount ≥ 0.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizationState {
    #[serde(with = "rust_decimal::serde::str")]
    pub authorized: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub captured: Decimal,
    /// Released by VOIDs and by the remainder of a final capture.
    #[serde(with = "rust_decimal::serde::str")]
    pub voided: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub refunded: Decimal,
    /// The part of `refunded` that gave budget back (`refunds: restore`).
    #[serde(with = "rust_decimal::serde::str")]
    pub restored: Decimal,
    /// What expiry released (the remainder at `expiresAt`).
    #[serde(with = "rust_decimal::serde::str")]
    pub expired_amount: Decimal,
    /// No capture or void may follow (final capture, nothing left to capture).
    #[serde(rename = "final")]
    pub is_final: bool,
    pub expired: bool,
    pub expires_at: DateTime<Utc>,
    /// The windows of the original acceptance, where every adjustment lands.
    pub currency: String,
    pub tz: String,
    pub day: NaiveDate,
    pub month: NaiveDate,
    /// An intent in a foreign currency (SPEC §12.3): the amounts above are in the
    /// intent's currency (settlements come in it); its usage counts in the windows'
    /// currency `usage_currency`, converted at the decision's `fx_rate`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "rust_decimal::serde::str_option"
    )]
    pub fx_rate: Option<Decimal>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage_currency: Option<String>,
}

/// SPEC §11's running totals, as published in outcome messages and the API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizationTotals {
    #[serde(with = "rust_decimal::serde::str")]
    pub authorized: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub captured: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub voided: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub refunded: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub outstanding: Decimal,
    #[serde(rename = "final")]
    pub is_final: bool,
    pub expired: bool,
    pub expires_at: DateTime<Utc>,
}

/// Why a settlement cannot apply (stable codes, SPEC §11).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SettlementRefusal {
    UnknownIntent,
    /// Denied, still waiting for approval, or closed without approval.
    NotAuthorized,
    /// CANCEL of an intent that is not waiting for approval.
    NotAwaitingApproval,
    ExceedsRemainder,
    ExceedsRefundable,
    CurrencyMismatch,
    AlreadyFinal,
    IdempotencyConflict,
}

impl SettlementRefusal {
    pub fn as_str(self) -> &'static str {
        match self {
            SettlementRefusal::UnknownIntent => "unknown_intent",
            SettlementRefusal::NotAuthorized => "not_authorized",
            SettlementRefusal::NotAwaitingApproval => "not_awaiting_approval",
            SettlementRefusal::ExceedsRemainder => "exceeds_remainder",
            SettlementRefusal::ExceedsRefundable => "exceeds_refundable",
            SettlementRefusal::CurrencyMismatch => "currency_mismatch",
            SettlementRefusal::AlreadyFinal => "already_final",
            SettlementRefusal::IdempotencyConflict => "idempotency_conflict",
        }
    }
}

/// What a settlement did: the state after it and the amounts it moved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settled {
    pub after: AuthorizationState,
    /// The amount applied (a VOID without amount: the remainder it released).
    pub amount: Decimal,
    /// The uncaptured remainder a final capture released.
    pub released: Decimal,
    /// A capture after the authorization expired (`capture_after_expiry`).
    pub forced: bool,
    /// Added to the usage windows of the original acceptance (negative releases).
    pub usage_delta: Decimal,
}

impl AuthorizationState {
    /// A fresh authorization of `amount` in the windows of its acceptance.
    pub fn open(
        amount: Decimal,
        currency: &str,
        tz: &str,
        day: NaiveDate,
        month: NaiveDate,
        expires_at: DateTime<Utc>,
    ) -> AuthorizationState {
        AuthorizationState {
            authorized: amount,
            captured: Decimal::ZERO,
            voided: Decimal::ZERO,
            refunded: Decimal::ZERO,
            restored: Decimal::ZERO,
            expired_amount: Decimal::ZERO,
            is_final: false,
            expired: false,
            expires_at,
            currency: currency.to_string(),
            tz: tz.to_string(),
            day,
            month,
            fx_rate: None,
            usage_currency: None,
        }
    }

    /// The same authorization kept in `intent_currency`, its usage converted at `rate`
    /// into `self.currency` (the windows' currency).
    pub fn in_foreign_currency(
        mut self,
        intent_amount: Decimal,
        intent_currency: &str,
        rate: Decimal,
    ) -> AuthorizationState {
        let windows = std::mem::replace(&mut self.currency, intent_currency.to_string());
        self.authorized = intent_amount;
        self.fx_rate = Some(rate);
        self.usage_currency = Some(windows);
        self
    }

    /// The currency of the usage windows it counts in.
    pub fn window_currency(&self) -> &str {
        self.usage_currency.as_deref().unwrap_or(&self.currency)
    }

    /// [`Self::usage`] in the windows' currency: converted at the decision's rate and
    /// rounded half-up once, so a sum of deltas always equals the converted total.
    pub fn usage_in_windows(&self) -> Decimal {
        let usage = self.usage();
        match self.fx_rate {
            None => usage,
            Some(rate) => {
                let minor =
                    crate::money::currency(self.window_currency()).map_or(2, |c| c.minor_units);
                crate::money::convert(usage, rate, minor).unwrap_or(usage)
            }
        }
    }

    /// What may still be captured or voided (expired or not).
    pub fn remainder(&self) -> Decimal {
        if self.is_final {
            Decimal::ZERO
        } else {
            self.authorized - self.captured - self.voided
        }
    }

    /// Authorized and not yet captured, voided or expired: still held against the caps.
    pub fn outstanding(&self) -> Decimal {
        if self.expired {
            Decimal::ZERO
        } else {
            self.remainder()
        }
    }

    /// What this authorization adds to its usage windows (SPEC §11: outstanding +
    /// captured − refunds that restore).
    pub fn usage(&self) -> Decimal {
        self.outstanding() + self.captured - self.restored
    }

    /// Whether a count limit (SPEC §12) counts this intent: anything outstanding or
    /// captured (a fully voided or expired, uncaptured intent does not).
    pub fn counts(&self) -> bool {
        self.outstanding() > Decimal::ZERO || self.captured > Decimal::ZERO
    }

    pub fn refundable(&self) -> Decimal {
        self.captured - self.refunded
    }

    /// The running totals, every amount in the currency's minor units (`"0.00"`, not
    /// `"0"`, whatever arithmetic produced it).
    pub fn totals(&self) -> AuthorizationTotals {
        let minor = crate::money::currency(&self.currency).map_or(2, |c| c.minor_units);
        let scaled = |mut d: Decimal| {
            d.rescale(minor);
            d
        };
        AuthorizationTotals {
            authorized: scaled(self.authorized),
            captured: scaled(self.captured),
            voided: scaled(self.voided),
            refunded: scaled(self.refunded),
            outstanding: scaled(self.outstanding()),
            is_final: self.is_final,
            expired: self.expired,
            expires_at: self.expires_at,
        }
    }

    /// The invariants every recorded state satisfies.
    pub fn check(&self) -> Result<(), String> {
        let z = Decimal::ZERO;
        let amounts = [
            self.authorized,
            self.captured,
            self.voided,
            self.refunded,
            self.restored,
            self.expired_amount,
        ];
        if amounts.iter().any(|a| *a < z) {
            return Err(format!("negative amount in {self:?}"));
        }
        if self.captured + self.voided > self.authorized {
            return Err(format!(
                "captured {} + voided {} exceed authorized {}",
                self.captured, self.voided, self.authorized
            ));
        }
        if self.refunded > self.captured || self.restored > self.refunded {
            return Err(format!(
                "refunded {} / restored {} exceed captured {}",
                self.refunded, self.restored, self.captured
            ));
        }
        Ok(())
    }

    /// Applies a CAPTURE, VOID or REFUND (CANCEL closes a waiting intent: not here).
    /// `amount` is `None` only for a VOID of the whole remainder; `restore` is the
    /// policy's `refunds: restore`.
    pub fn settle(
        &self,
        kind: SettlementType,
        amount: Option<Decimal>,
        is_final: bool,
        restore: bool,
    ) -> Result<Settled, (SettlementRefusal, String)> {
        let mut after = self.clone();
        let remainder = self.remainder();
        let cur = &self.currency;
        let (applied, released, forced) = match kind {
            SettlementType::Capture | SettlementType::Void if self.is_final => {
                return Err((
                    SettlementRefusal::AlreadyFinal,
                    format!(
                        "the authorization is final (captured {}, voided {} of {} {cur}); nothing more can be captured or voided",
                        shown(self.captured, cur),
                        shown(self.voided, cur),
                        shown(self.authorized, cur)
                    ),
                ));
            }
            SettlementType::Capture => {
                let a = amount.unwrap_or(Decimal::ZERO);
                if a > remainder {
                    return Err(over_remainder("capture", a, remainder, cur));
                }
                after.captured += a;
                let released = if is_final {
                    remainder - a
                } else {
                    Decimal::ZERO
                };
                after.voided += released;
                (a, released, self.expired)
            }
            SettlementType::Void => {
                let v = amount.unwrap_or(remainder);
                if v > remainder {
                    return Err(over_remainder("void", v, remainder, cur));
                }
                after.voided += v;
                (v, Decimal::ZERO, false)
            }
            SettlementType::Refund => {
                let r = amount.unwrap_or(Decimal::ZERO);
                if r > self.refundable() {
                    return Err((
                        SettlementRefusal::ExceedsRefundable,
                        format!(
                            "refund {} > {} {cur} refundable (captured {} − refunded {})",
                            shown(r, cur),
                            shown(self.refundable(), cur),
                            shown(self.captured, cur),
                            shown(self.refunded, cur)
                        ),
                    ));
                }
                after.refunded += r;
                if restore {
                    after.restored += r;
                }
                (r, Decimal::ZERO, false)
            }
            SettlementType::Cancel => {
                return Err((
                    SettlementRefusal::NotAwaitingApproval,
                    "the intent is authorized, not waiting for approval: send a VOID to release it"
                        .into(),
                ));
            }
        };
        // Nothing left to capture or void: the authorization is done.
        if after.authorized - after.captured - after.voided == Decimal::ZERO {
            after.is_final = true;
        }
        after.is_final |= is_final;
        debug_assert!(after.check().is_ok(), "{:?}", after.check());
        Ok(Settled {
            usage_delta: after.usage_in_windows() - self.usage_in_windows(),
            after,
            amount: applied,
            released,
            forced,
        })
    }

    /// The state once `authorizationTtl` passed without the authorization being final,
    /// or `None` when there is nothing to expire.
    pub fn expire(&self, now: DateTime<Utc>) -> Option<(AuthorizationState, Decimal)> {
        if self.is_final || self.expired || now < self.expires_at {
            return None;
        }
        let mut after = self.clone();
        after.expired = true;
        after.expired_amount = self.remainder();
        let delta = after.usage_in_windows() - self.usage_in_windows();
        Some((after, delta))
    }
}

fn over_remainder(
    what: &str,
    amount: Decimal,
    remainder: Decimal,
    cur: &str,
) -> (SettlementRefusal, String) {
    (
        SettlementRefusal::ExceedsRemainder,
        format!(
            "{what} {} > {} {cur} remaining on the authorization",
            shown(amount, cur),
            shown(remainder, cur)
        ),
    )
}

/// An amount as a refusal's text shows it: with the currency's minor units, whatever
/// the Decimal's scale. Live settling reads amounts back from PostgreSQL, which returns
/// a zero without its scale (`0`, where the pure fold holds `0.00`); the recorded text
/// must not depend on which of the two computed it (the machine_model test found it).
fn shown(amount: Decimal, currency: &str) -> String {
    let known = crate::money::currency(currency);
    debug_assert!(
        known.is_some(),
        "authorization in unknown currency {currency}"
    );
    match known {
        Some(c) => format!("{:.*}", c.minor_units as usize, amount),
        None => amount.normalize().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use SettlementType::*;

    fn d(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    fn auth(amount: &str) -> AuthorizationState {
        let day = NaiveDate::from_ymd_opt(2026, 11, 30).unwrap();
        AuthorizationState::open(
            d(amount),
            "BRL",
            "UTC",
            day,
            day.with_day(1).unwrap(),
            DateTime::<Utc>::UNIX_EPOCH + chrono::Duration::days(7),
        )
    }

    use chrono::Datelike;

    #[test]
    fn capture_of_exactly_the_remainder_passes_and_one_minor_unit_more_does_not() {
        let a = auth("100.00");
        let s = a.settle(Capture, Some(d("100.00")), false, false).unwrap();
        assert!(s.after.is_final, "nothing left: final");
        assert_eq!(s.usage_delta, Decimal::ZERO);
        let (code, detail) = a
            .settle(Capture, Some(d("100.01")), false, false)
            .unwrap_err();
        assert_eq!(code, SettlementRefusal::ExceedsRemainder);
        assert_eq!(
            detail,
            "capture 100.01 > 100.00 BRL remaining on the authorization"
        );
    }

    /// A refusal's text does not depend on an amount's scale: live settling reads a zero
    /// back from PostgreSQL as `0` where the pure fold holds `0.00` (machine_model seed
    /// e4a74d06), and amounts given without decimals (`50`) show as the currency writes
    /// them.
    #[test]
    fn refusal_texts_show_amounts_in_the_currencys_minor_units() {
        let mut folded = auth("50")
            .settle(Capture, Some(d("50")), true, false)
            .unwrap()
            .after;
        folded.voided = d("0.00");
        let mut loaded = folded.clone();
        loaded.voided = Decimal::ZERO;
        let text = |a: &AuthorizationState| a.settle(Void, None, false, false).unwrap_err().1;
        assert_eq!(text(&folded), text(&loaded));
        assert_eq!(
            text(&loaded),
            "the authorization is final (captured 50.00, voided 0.00 of 50.00 BRL); nothing more can be captured or voided"
        );
        let refund = folded
            .settle(Refund, Some(d("60")), false, false)
            .unwrap_err()
            .1;
        assert_eq!(
            refund,
            "refund 60.00 > 50.00 BRL refundable (captured 50.00 − refunded 0.00)"
        );
    }

    #[test]
    fn final_capture_releases_the_rest_and_refunds_restore_only_when_asked() {
        let a = auth("100.00");
        let s = a.settle(Capture, Some(d("80.00")), true, false).unwrap();
        assert_eq!((s.released, s.usage_delta), (d("20.00"), d("-20.00")));
        assert_eq!(s.after.usage(), d("80.00"));
        let ignore = s.after.settle(Refund, Some(d("30")), false, false).unwrap();
        assert_eq!(ignore.usage_delta, Decimal::ZERO);
        let restore = s.after.settle(Refund, Some(d("30")), false, true).unwrap();
        assert_eq!(restore.usage_delta, d("-30"));
        let (code, _) = restore
            .after
            .settle(Refund, Some(d("50.01")), false, true)
            .unwrap_err();
        assert_eq!(code, SettlementRefusal::ExceedsRefundable);
        assert!(
            restore
                .after
                .settle(Refund, Some(d("50.00")), false, true)
                .is_ok()
        );
        let (code, _) = s.after.settle(Void, None, false, false).unwrap_err();
        assert_eq!(code, SettlementRefusal::AlreadyFinal);
    }

    #[test]
    fn expiry_releases_and_a_forced_capture_counts_again() {
        let a = auth("100.00");
        let part = a
            .settle(Capture, Some(d("30")), false, false)
            .unwrap()
            .after;
        assert!(
            part.expire(part.expires_at - chrono::Duration::seconds(1))
                .is_none()
        );
        let (expired, delta) = part.expire(part.expires_at).unwrap();
        assert_eq!((delta, expired.expired_amount), (d("-70.00"), d("70.00")));
        assert_eq!(expired.usage(), d("30"));
        let forced = expired
            .settle(Capture, Some(d("50")), false, false)
            .unwrap();
        assert!(forced.forced);
        assert_eq!(forced.usage_delta, d("50"));
        let void = expired.settle(Void, None, false, false).unwrap();
        assert_eq!((void.amount, void.usage_delta), (d("70.00"), Decimal::ZERO));
        assert!(void.after.is_final);
    }
}
