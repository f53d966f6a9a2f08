//! A `Decimal` stored in 8 bytes instead of 16, exactly (mantissa and scale, so the
//! text it prints is unchanged), for the amounts replay holds per authorization and
//! per usage window (SPEC §10's memory target). Nothing computes with the packed
//! form: it is unpacked to a `Decimal` first. A value that does not fit (a mantissa
//! beyond ±2^58, or negative zero) is not packed: callers keep it as a `Decimal`.

use rust_decimal::Decimal;

/// `mantissa << 5 | scale`: a signed 59-bit mantissa and the scale (0..=28) in 5 bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Packed(i64);

const SCALE_BITS: u32 = 5;
const SCALE_MASK: i64 = (1 << SCALE_BITS) - 1;
/// Mantissas in `[-LIMIT, LIMIT)` fit.
const LIMIT: i128 = 1 << (63 - SCALE_BITS);

impl Packed {
    /// `None` stands for an absent amount (no `Decimal` has scale 31).
    pub const NONE: Packed = Packed(SCALE_MASK);

    /// The packed form of `d`, if it fits; unpacking it gives back `d` bit for bit.
    pub fn of(d: Decimal) -> Option<Packed> {
        let m = d.mantissa();
        if !(-LIMIT..LIMIT).contains(&m) || (m == 0 && d.is_sign_negative()) {
            return None;
        }
        let p = Packed(((m as i64) << SCALE_BITS) | i64::from(d.scale()));
        assert_eq!(
            p.get().serialize(),
            d.serialize(),
            "packing a decimal is exact"
        );
        Some(p)
    }

    pub fn get(self) -> Decimal {
        debug_assert!(self != Packed::NONE);
        Decimal::from_i128_with_scale(
            i128::from(self.0 >> SCALE_BITS),
            (self.0 & SCALE_MASK) as u32,
        )
    }

    /// An optional amount: `None` packs as [`Packed::NONE`].
    pub fn of_option(d: Option<Decimal>) -> Option<Packed> {
        match d {
            None => Some(Packed::NONE),
            Some(d) => Packed::of(d),
        }
    }

    pub fn get_option(self) -> Option<Decimal> {
        (self != Packed::NONE).then(|| self.get())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::str::FromStr;

    #[test]
    fn packs_exactly_or_not_at_all() {
        for s in [
            "0",
            "0.00",
            "80.00",
            "-80.00",
            "1",
            "0.000001",
            "123456789.123456789",
            "-0.5",
            "5.1234567890123456",
            "0.0000000000000000000000000001",
            "288230376151711743",
            "-288230376151711744",
        ] {
            let d = Decimal::from_str(s).unwrap();
            let p = Packed::of(d).unwrap_or_else(|| panic!("{s} packs"));
            assert_eq!(p.get().to_string(), d.to_string());
            assert_eq!(p.get().serialize(), d.serialize());
        }
        for s in [
            "288230376151711744",
            "-288230376151711745",
            "5.123456789012345678",
            "79228162514264337593543950335",
        ] {
            assert_eq!(Packed::of(Decimal::from_str(s).unwrap()), None, "{s}");
        }
        let mut neg_zero = Decimal::ZERO;
        neg_zero.set_sign_negative(true);
        assert_eq!(Packed::of(neg_zero), None);
        assert_eq!(Packed::of_option(None), Some(Packed::NONE));
        assert_eq!(Packed::NONE.get_option(), None);
    }

    proptest! {
        #[test]
        fn round_trips(lo in any::<u32>(), mid in any::<u32>(), hi in 0u32..4, neg: bool, scale in 0u32..=28) {
            let d = Decimal::from_parts(lo, mid, hi, neg, scale);
            match Packed::of(d) {
                Some(p) => {
                    prop_assert_eq!(p.get().serialize(), d.serialize());
                    prop_assert_eq!(Packed::of_option(Some(d)).unwrap().get_option(), Some(d));
                }
                None => prop_assert!(!(-LIMIT..LIMIT).contains(&d.mantissa()) || (d.is_zero() && d.is_sign_negative())),
            }
        }
    }
}
