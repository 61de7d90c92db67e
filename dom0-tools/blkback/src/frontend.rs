//! What the frontend published for the connection: rings, channels and
//! options, read through a lookup function so the rules are testable
//! without a store.

use xen_abi::io::blkif::{keys, PROTOCOL_X86_64};
use xen_abi::io::ring::MAX_RING_PAGE_ORDER;

use crate::error::BlkError;

/// One queue's transport: its ring pages (in order) and event channel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueConfig {
    pub ring_refs: Vec<u32>,
    pub event_channel: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrontendConfig {
    pub queues: Vec<QueueConfig>,
    /// The frontend wants persistent grants.
    pub persistent: bool,
}

/// What the backend offered, which bounds what the frontend may ask for.
#[derive(Clone, Copy, Debug)]
pub struct Offer {
    pub max_queues: u32,
    pub max_ring_page_order: u32,
}

fn number(read: &impl Fn(&str) -> Option<String>, key: &str) -> Result<Option<u32>, BlkError> {
    match read(key) {
        None => Ok(None),
        Some(v) => v
            .trim()
            .parse::<u32>()
            .map(Some)
            .map_err(|_| BlkError::Frontend(format!("{key}: not a number: {v:?}"))),
    }
}

fn required(read: &impl Fn(&str) -> Option<String>, key: &str) -> Result<u32, BlkError> {
    number(read, key)?.ok_or_else(|| BlkError::Frontend(format!("{key} missing")))
}

/// Read the frontend's nodes (`read` takes a key relative to the frontend
/// directory) and check them against what was offered.
pub fn read_frontend(
    read: impl Fn(&str) -> Option<String>,
    offer: Offer,
) -> Result<FrontendConfig, BlkError> {
    if let Some(p) = read(keys::PROTOCOL) {
        if p != PROTOCOL_X86_64 {
            return Err(BlkError::Frontend(format!("unsupported protocol {p:?}")));
        }
    }
    let nqueues = number(&read, keys::MULTI_QUEUE_NUM_QUEUES)?.unwrap_or(1);
    if nqueues == 0 || nqueues > offer.max_queues.max(1) {
        return Err(BlkError::Frontend(format!(
            "multi-queue-num-queues {nqueues} (at most {})",
            offer.max_queues.max(1)
        )));
    }
    let order = number(&read, keys::RING_PAGE_ORDER)?;
    let max_order = offer.max_ring_page_order.min(MAX_RING_PAGE_ORDER);
    if order.is_some_and(|o| o > max_order) {
        return Err(BlkError::Frontend(format!(
            "ring-page-order {} (at most {max_order})",
            order.unwrap_or(0)
        )));
    }
    let mut queues = Vec::with_capacity(nqueues as usize);
    for q in 0..nqueues {
        let dir = if nqueues == 1 {
            String::new()
        } else {
            format!("{}{q}/", keys::QUEUE_PREFIX)
        };
        let key = |k: &str| format!("{dir}{k}");
        let ring_refs = match order {
            None => vec![required(&read, &key(keys::RING_REF))?],
            Some(o) => {
                let mut refs = Vec::with_capacity(1 << o);
                for i in 0..(1u32 << o) {
                    let k = key(&format!("{}{i}", keys::RING_REF_PREFIX));
                    // Some frontends write plain "ring-ref" for order 0.
                    let r = match (number(&read, &k)?, o) {
                        (Some(r), _) => r,
                        (None, 0) => required(&read, &key(keys::RING_REF))?,
                        (None, _) => return Err(BlkError::Frontend(format!("{k} missing"))),
                    };
                    refs.push(r);
                }
                refs
            }
        };
        let event_channel = required(&read, &key(keys::EVENT_CHANNEL))?;
        queues.push(QueueConfig {
            ring_refs,
            event_channel,
        });
    }
    let persistent = number(&read, keys::FRONTEND_FEATURE_PERSISTENT)
        .ok()
        .flatten()
        .is_some_and(|v| v == 1);
    Ok(FrontendConfig { queues, persistent })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const OFFER: Offer = Offer {
        max_queues: 4,
        max_ring_page_order: 4,
    };

    fn store(kv: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = kv
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn single_ring() {
        let c = read_frontend(
            store(&[
                ("ring-ref", "8"),
                ("event-channel", "5"),
                ("protocol", "x86_64-abi"),
                ("feature-persistent", "1"),
            ]),
            OFFER,
        )
        .unwrap();
        assert_eq!(
            c.queues,
            vec![QueueConfig {
                ring_refs: vec![8],
                event_channel: 5
            }]
        );
        assert!(c.persistent);
    }

    #[test]
    fn multi_page_multi_queue() {
        let c = read_frontend(
            store(&[
                ("multi-queue-num-queues", "2"),
                ("ring-page-order", "1"),
                ("queue-0/ring-ref0", "10"),
                ("queue-0/ring-ref1", "11"),
                ("queue-0/event-channel", "3"),
                ("queue-1/ring-ref0", "12"),
                ("queue-1/ring-ref1", "13"),
                ("queue-1/event-channel", "4"),
            ]),
            OFFER,
        )
        .unwrap();
        assert_eq!(c.queues.len(), 2);
        assert_eq!(c.queues[1].ring_refs, vec![12, 13]);
        assert_eq!(c.queues[1].event_channel, 4);
        assert!(!c.persistent);
    }

    #[test]
    fn bad_frontends() {
        let base = [("ring-ref", "8"), ("event-channel", "5")];
        let with = |extra: (&'static str, &'static str)| {
            let mut v = base.to_vec();
            v.push(extra);
            read_frontend(store(&v), OFFER)
        };
        assert!(with(("protocol", "x86_32-abi")).is_err());
        assert!(with(("multi-queue-num-queues", "0")).is_err());
        assert!(with(("multi-queue-num-queues", "5")).is_err());
        assert!(with(("ring-page-order", "5")).is_err());
        assert!(with(("ring-page-order", "1")).is_err());
        assert!(with(("ring-page-order", "x")).is_err());
        assert!(read_frontend(store(&[("ring-ref", "8")]), OFFER).is_err());
        assert!(
            read_frontend(store(&[("ring-ref", "-1"), ("event-channel", "5")]), OFFER).is_err()
        );
        // Order 0 with plain ring-ref is accepted.
        assert!(with(("ring-page-order", "0")).is_ok());
    }
}
