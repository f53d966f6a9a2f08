//! A vote's way in (SPEC §4, §13.1), shared by `spend.approvals` (serve's worker) and
//! `POST /v1/approvals/{intentId}/votes`: the same checks in the same order, then the
//! same ledger functions (`Ledger::apply_vote`, `Ledger::refuse_vote`), so a vote is
//! judged and audited the same whichever way it came.

use crate::approvals::{self, Registry, VoteMessage, VoteRefusal, VoteSubject};
use crate::ledger::{Ledger, LedgerError, Origin, VerifiedVote, VoteResult};

/// The checks that read the ledger but change nothing: the decision the vote is about
/// exists, the registry admits the approver for it, the signature covers it, and it was
/// signed within [`approvals::MAX_SIGNATURE_SKEW_SECS`] of the ledger's clock. The
/// outer error is the ledger's (retry); the inner one is the vote's (refuse it).
pub async fn check(
    ledger: &Ledger,
    registry: &Registry,
    vote: &VoteMessage,
) -> Result<Result<VerifiedVote, VoteRefusal>, LedgerError> {
    let Some(record) = ledger.decision(&vote.intent_id).await? else {
        return Ok(Err(VoteRefusal::UnknownIntent(vote.intent_id.clone())));
    };
    let subject = VoteSubject {
        agent_id: &record.message.agent_id,
        entity_id: &record.message.entity_id,
        decision_hash: &record.decision_hash,
    };
    let verified = match registry.verify(vote, subject) {
        Ok(v) => v,
        Err(refusal) => return Ok(Err(refusal)),
    };
    // Checked after the signature: a forger learns nothing about the clock.
    if let Err(refusal) = approvals::check_fresh(&vote.signed_at, ledger.db_now().await?) {
        return Ok(Err(refusal));
    }
    Ok(Ok(verified))
}

/// Who submits a vote over the API: the approver its token is bound to, for the intent
/// named in the path.
#[derive(Debug, Clone, Copy)]
pub struct Submitter<'a> {
    pub approver_id: &'a str,
    pub intent_id: &'a str,
}

/// A vote submitted over the API: parsed, checked like a Kafka vote, then applied or its
/// refusal audited. The token only names who may submit; the signature alone makes the
/// vote count.
pub async fn submit(
    ledger: &Ledger,
    registry: &Registry,
    raw: &[u8],
    by: Submitter<'_>,
    origin: &Origin,
) -> Result<VoteResult, LedgerError> {
    let checked = match approvals::parse_vote(raw) {
        Err(refusal) => Err(refusal),
        Ok(vote) if vote.intent_id != by.intent_id => Err(VoteRefusal::Malformed(format!(
            "the body votes on intent {}, the path names {}",
            vote.intent_id, by.intent_id
        ))),
        Ok(vote) if vote.approver_id != by.approver_id => Err(VoteRefusal::ApproverMismatch {
            token: by.approver_id.to_string(),
            vote: vote.approver_id,
        }),
        Ok(vote) => check(ledger, registry, &vote).await?,
    };
    match checked {
        Ok(verified) => ledger.apply_vote(&verified, origin).await,
        Err(refusal) => {
            let detail = refusal.to_string();
            let seq = ledger
                .refuse_vote(raw, refusal.code(), &detail, origin)
                .await?;
            Ok(VoteResult::Refused {
                seq,
                reason: refusal.code().to_string(),
                detail,
            })
        }
    }
}
