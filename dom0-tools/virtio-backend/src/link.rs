//! The kxend side of the per-device virtio link with kxen-vmm
//! (hypervisor/vmm/virtio-protocol.md): the JSON lines on the link socket.
//! The `virtio-attach` control request that sets the link up is
//! `kxen_vmm_api::protocol::VirtioAttach`.

use serde::Deserialize;
use serde_json::json;

/// Longest link line accepted.
pub const MAX_LINE: usize = 64 * 1024;
/// Most bytes of device config space the VMM takes.
pub const MAX_CONFIG: usize = 256;

/// One ready queue in an activate message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct QueueSetup {
    pub index: u32,
    pub size: u16,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    /// A restored queue's saved positions (a migration or restore of a
    /// running device): the next avail entry to take and used entry to
    /// fill. Absent on a driver's activation, which starts both at 0.
    #[serde(default)]
    pub next_avail: Option<u16>,
    #[serde(default)]
    pub next_used: Option<u16>,
}

impl QueueSetup {
    /// Whether this queue goes on from saved positions.
    pub fn is_resumed(&self) -> bool {
        self.next_avail.is_some() || self.next_used.is_some()
    }
}

/// A message from the VMM on the link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEvent {
    /// The driver set DRIVER_OK.
    Activate {
        features: u64,
        queues: Vec<QueueSetup>,
    },
    /// The driver wrote Status = 0.
    Reset,
}

#[derive(Deserialize)]
struct RawEvent {
    event: String,
    #[serde(default)]
    features: Option<u64>,
    #[serde(default)]
    queues: Option<Vec<QueueSetup>>,
}

/// Parse one link line.
pub fn parse_event(line: &[u8]) -> Result<LinkEvent, String> {
    let raw: RawEvent =
        serde_json::from_slice(line).map_err(|e| format!("bad link message: {e}"))?;
    match raw.event.as_str() {
        "activate" => Ok(LinkEvent::Activate {
            features: raw.features.ok_or("activate without features")?,
            queues: raw.queues.unwrap_or_default(),
        }),
        "reset" => Ok(LinkEvent::Reset),
        other => Err(format!("unknown event `{other}'")),
    }
}

/// The reply line (newline included) for a handled message.
pub fn reply_line(result: &Result<(), String>) -> String {
    let v = match result {
        Ok(()) => json!({ "ok": true }),
        Err(e) => json!({ "ok": false, "error": e }),
    };
    format!("{v}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resumed_queue_carries_its_positions() {
        let a = br#"{"event":"activate","features":4294967296,"queues":[{"index":1,"size":256,"desc":4096,"avail":8192,"used":12288,"next_avail":65535,"next_used":3}]}"#;
        let LinkEvent::Activate { queues, .. } = parse_event(a).unwrap() else {
            panic!("not an activation");
        };
        assert_eq!(queues[0].next_avail, Some(65535));
        assert_eq!(queues[0].next_used, Some(3));
        assert!(queues[0].is_resumed());
        let bad = br#"{"event":"activate","features":1,"queues":[{"index":1,"size":256,"desc":0,"avail":0,"used":0,"next_avail":65536}]}"#;
        assert!(parse_event(bad).is_err(), "a position past u16");
    }

    #[test]
    fn messages() {
        let a = br#"{"event":"activate","features":4294967296,"queues":[{"index":0,"size":128,"desc":4096,"avail":8192,"used":12288}]}"#;
        assert_eq!(
            parse_event(a).unwrap(),
            LinkEvent::Activate {
                features: 1 << 32,
                queues: vec![QueueSetup {
                    index: 0,
                    size: 128,
                    desc: 4096,
                    avail: 8192,
                    used: 12288,
                    next_avail: None,
                    next_used: None,
                }]
            }
        );
        assert_eq!(
            parse_event(b"{\"event\":\"reset\"}\n").unwrap(),
            LinkEvent::Reset
        );
        assert!(parse_event(b"{\"event\":\"frob\"}").is_err());
        assert!(parse_event(b"{\"event\":\"activate\"}").is_err());
        assert!(parse_event(b"nonsense").is_err());
        assert_eq!(reply_line(&Ok(())), "{\"ok\":true}\n");
        assert_eq!(
            reply_line(&Err("no".into())),
            "{\"error\":\"no\",\"ok\":false}\n"
        );
    }
}
