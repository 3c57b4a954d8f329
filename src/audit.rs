//! The audit hash chain (invariant 9): how an event's hash is computed and how a chain
//! is checked. Pure functions; the store decides where the chain lives.
//!
//! `hash(n) = SHA-256("airlock-audit-v1\n" || hash(n-1) || canonical(n))`, where
//! `canonical` is the event as JSON with sorted keys, including its sequence number,
//! and `hash(0)` is 32 zero bytes. Editing a row changes its hash; deleting or
//! reordering rows breaks the `prev_hash` link or the sequence.

use sha2::{Digest, Sha256};

use crate::domain::{AuditRecord, NewAuditEvent};

/// The hash before the first event.
pub const GENESIS: [u8; 32] = [0u8; 32];

/// Canonical bytes of an event at position `seq`.
pub fn canonical(seq: i64, e: &NewAuditEvent) -> Vec<u8> {
    // serde_json's Map is a BTreeMap (no `preserve_order` feature), so keys are sorted and
    // the encoding is deterministic, including nested `details`.
    let value = serde_json::json!({
        "seq": seq,
        "id": e.id.to_string(),
        "time_us": (e.time.unix_timestamp_nanos() / 1000) as i64,
        "kind": e.kind,
        "actor": e.actor,
        "environment": e.environment,
        "subject": e.subject,
        "outcome": e.outcome.as_str(),
        "details": e.details,
    });
    serde_json::to_vec(&value).expect("a JSON value always serialises")
}

/// Hash of the event at `seq` following `prev`.
pub fn chain_hash(prev: &[u8], seq: i64, e: &NewAuditEvent) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"airlock-audit-v1\n");
    h.update(prev);
    h.update(canonical(seq, e));
    h.finalize().into()
}

/// Link `events` onto a chain whose head is `(seq, hash)`.
pub fn link(head_seq: i64, head_hash: &[u8], events: Vec<NewAuditEvent>) -> Vec<AuditRecord> {
    let mut prev = head_hash.to_vec();
    let mut seq = head_seq;
    events
        .into_iter()
        .map(|event| {
            seq += 1;
            let hash = chain_hash(&prev, seq, &event).to_vec();
            let record = AuditRecord {
                seq,
                event,
                prev_hash: prev.clone(),
                hash: hash.clone(),
            };
            prev = hash;
            record
        })
        .collect()
}

/// The first problem found in a chain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainBreak {
    /// A sequence number is missing or out of order: deleted or reordered rows.
    #[error("event #{found} follows #{after}: events are missing or out of order")]
    Gap {
        /// Sequence number before the gap.
        after: i64,
        /// Sequence number found.
        found: i64,
    },
    /// The stored `prev_hash` is not the previous event's hash.
    #[error("event #{seq} does not link to the event before it (prev_hash mismatch)")]
    Link {
        /// Where the link breaks.
        seq: i64,
    },
    /// The stored hash does not match the content: the row was edited.
    #[error("event #{seq} was altered: its content does not match its hash")]
    Content {
        /// The altered event.
        seq: i64,
    },
    /// The chain head kept by the store disagrees with the last event.
    #[error(
        "the chain ends at event #{last} but the store's head says #{head}: events were removed from the end"
    )]
    Head {
        /// Last event seen.
        last: i64,
        /// Head recorded by the store.
        head: i64,
    },
}

/// Incremental verifier, fed pages of records in sequence order.
#[derive(Debug, Clone)]
pub struct Verifier {
    last_seq: i64,
    last_hash: Vec<u8>,
    checked: u64,
}

impl Default for Verifier {
    fn default() -> Self {
        Verifier {
            last_seq: 0,
            last_hash: GENESIS.to_vec(),
            checked: 0,
        }
    }
}

impl Verifier {
    /// Check the next record.
    pub fn check(&mut self, r: &AuditRecord) -> Result<(), ChainBreak> {
        if r.seq != self.last_seq + 1 {
            return Err(ChainBreak::Gap {
                after: self.last_seq,
                found: r.seq,
            });
        }
        if r.prev_hash != self.last_hash {
            return Err(ChainBreak::Link { seq: r.seq });
        }
        if chain_hash(&r.prev_hash, r.seq, &r.event).as_slice() != r.hash.as_slice() {
            return Err(ChainBreak::Content { seq: r.seq });
        }
        self.last_seq = r.seq;
        self.last_hash = r.hash.clone();
        self.checked += 1;
        Ok(())
    }

    /// Check the end of the chain against the head the store recorded.
    pub fn finish(&self, head_seq: i64, head_hash: &[u8]) -> Result<u64, ChainBreak> {
        if head_seq != self.last_seq || head_hash != self.last_hash.as_slice() {
            return Err(ChainBreak::Head {
                last: self.last_seq,
                head: head_seq,
            });
        }
        Ok(self.checked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Outcome;

    fn chain(n: usize) -> Vec<AuditRecord> {
        let events = (0..n)
            .map(|i| NewAuditEvent::new("test", format!("actor{i}"), Outcome::Success).detail("i", i))
            .collect();
        link(0, &GENESIS, events)
    }

    fn verify(records: &[AuditRecord]) -> Result<u64, ChainBreak> {
        let mut v = Verifier::default();
        for r in records {
            v.check(r)?;
        }
        let last = records.last().unwrap();
        v.finish(last.seq, &last.hash)
    }

    #[test]
    fn an_intact_chain_verifies() {
        assert_eq!(verify(&chain(5)), Ok(5));
    }

    #[test]
    fn an_edited_event_is_found() {
        let mut c = chain(5);
        c[2].event.actor = "mallory".into();
        assert_eq!(verify(&c), Err(ChainBreak::Content { seq: 3 }));
    }

    #[test]
    fn a_deleted_event_is_found() {
        let mut c = chain(5);
        c.remove(1);
        assert_eq!(verify(&c), Err(ChainBreak::Gap { after: 1, found: 3 }));
    }

    #[test]
    fn reordered_events_are_found() {
        let mut c = chain(5);
        c.swap(1, 2);
        assert!(matches!(verify(&c), Err(ChainBreak::Gap { .. })));
        // Even with sequence numbers rewritten to look contiguous.
        c[1].seq = 2;
        c[2].seq = 3;
        assert_eq!(verify(&c), Err(ChainBreak::Link { seq: 2 }));
    }

    #[test]
    fn a_truncated_tail_is_found_against_the_head() {
        let c = chain(5);
        let head = c.last().unwrap().clone();
        let mut v = Verifier::default();
        for r in &c[..4] {
            v.check(r).unwrap();
        }
        assert_eq!(
            v.finish(head.seq, &head.hash),
            Err(ChainBreak::Head { last: 4, head: 5 })
        );
    }
}
