//! Lints: conflicts and mistakes in a policy that parse fine (SPEC §2.4).
