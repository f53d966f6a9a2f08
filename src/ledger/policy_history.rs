//! Policy lifecycle in the ledger (SPEC §16): refused policy sets, the activation
//! history of a policy, and rollback to an earlier content. Every statement on the
//! ledger's tables stays in this module tree.

use super::chain::GLOBAL_CHAIN;
use super::events::{LedgerEvent, PolicySetRefused};
use super::{Ledger, LedgerError, Origin};

impl Ledger {
    /// Records that a policies directory was refused (`policy_set_refused`, chain
    /// `global`), with every reason.
    pub async fn record_policy_set_refused(
        &self,
        refusal: PolicySetRefused,
        origin: &Origin,
    ) -> Result<i64, LedgerError> {
        let resource = format!("policies:{}", refusal.dir);
        let actor = origin.instance.clone();
        self.append_single(
            GLOBAL_CHAIN,
            &actor,
            &resource,
            (origin, ""),
            LedgerEvent::PolicySetRefused(refusal),
        )
        .await
    }
}
