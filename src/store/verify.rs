//! Verifying the audit trail as stored: the chain maths of [`crate::audit`] applied to
//! every event up to the recorded head (`airlock audit verify`).

use crate::audit::{ChainBreak, Verifier};

/// Result of verifying a whole stored chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// Events checked.
    pub events: u64,
    /// The head the check was made against.
    pub head_seq: i64,
    /// Its hash.
    pub head_hash: Vec<u8>,
}

/// Why a stored chain could not be verified.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The chain is broken.
    #[error(transparent)]
    Broken(#[from] ChainBreak),
    /// The store could not be read.
    #[error("cannot read the audit trail: {0}")]
    Store(#[from] super::StoreError),
}

/// Verify the chain in `store` up to the head it records when the check starts.
///
/// The head is read first and events after it are ignored, so a server appending while
/// the check runs cannot make an intact chain look truncated.
pub async fn verify_store(store: &dyn super::Store) -> Result<Verified, VerifyError> {
    const PAGE: u32 = 1000;
    let (head_seq, head_hash) = store.audit_head().await?;
    let mut verifier = Verifier::default();
    let mut after = 0;
    while after < head_seq {
        let page = store.audit_page(after, PAGE).await?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        for r in page.iter().take_while(|r| r.seq <= head_seq) {
            verifier.check(r)?;
        }
    }
    let events = verifier.finish(head_seq, &head_hash)?;
    Ok(Verified {
        events,
        head_seq,
        head_hash,
    })
}
