//! The one intent builder: [`intent`] gives a valid intent of entity `acme-br` in BRL, the
//! setters of [`IntentExt`] change what a test needs, [`IntentExt::json`] gives the wire
//! form (what is published on the intents topic or piped to `ledger submit`).
//!
//! ```ignore
//! let i = intent("i-1", "agent-a", "10.00"); // utility, utility:light (BR), PIX
//! let wire = intent("c-1", "agent-c", "10.00")
//!     .category("supplies")
//!     .beneficiary("vendor:known")
//!     .json();
//! ```

use spendguard::intent::{Beneficiary, Purpose, SpendIntent, parse_intent};

/// The entity of every test intent (the test policies bind `acme-*`).
pub const ENTITY: &str = "acme-br";

/// An intent of `agent` for entity `acme-br`: `amount` BRL, category `utility`,
/// beneficiary `utility:light` in BR (no account), purpose PIX, no metadata.
pub fn intent(id: &str, agent: &str, amount: &str) -> SpendIntent {
    SpendIntent {
        intent_id: id.to_string(),
        agent_id: agent.to_string(),
        entity_id: ENTITY.into(),
        amount: amount.parse().expect("amount"),
        currency: "BRL".into(),
        category: "utility".into(),
        beneficiary: Beneficiary {
            id: "utility:light".into(),
            account: None,
            country: Some("BR".into()),
        },
        purpose: Purpose::Pix,
        metadata: None,
    }
}

/// Setters on a test intent, chained after [`intent`].
pub trait IntentExt: Sized {
    fn category(self, category: &str) -> Self;
    /// The beneficiary's id (its country stays BR).
    fn beneficiary(self, id: &str) -> Self;
    /// The beneficiary's account (a card number: the ledger keeps it masked and sealed).
    fn account(self, account: &str) -> Self;
    /// The wire form: JSON as a producer would send it.
    fn json(&self) -> String;
}

impl IntentExt for SpendIntent {
    fn category(mut self, category: &str) -> Self {
        self.category = category.into();
        self
    }

    fn beneficiary(mut self, id: &str) -> Self {
        self.beneficiary.id = id.into();
        self
    }

    fn account(mut self, account: &str) -> Self {
        self.beneficiary.account = Some(account.into());
        self
    }

    fn json(&self) -> String {
        serde_json::to_string(self).expect("json")
    }
}

/// A valid intent from its JSON (panics when it is not one: test input).
pub fn parse(json: &str) -> SpendIntent {
    parse_intent(json.as_bytes()).expect("valid intent")
}

/// The wire form of an intent of the service tests (policy `svc-test`, see
/// [`super::policies::test_policies`]): category `supplies`, beneficiary `beneficiary`
/// (`vendor:known` is the allow-listed one).
pub fn svc_intent_json(id: &str, agent: &str, amount: &str, beneficiary: &str) -> String {
    intent(id, agent, amount)
        .category("supplies")
        .beneficiary(beneficiary)
        .json()
}
