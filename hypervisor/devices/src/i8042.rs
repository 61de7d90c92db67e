//! The i8042 keyboard controller at ports 0x60/0x64, enough of it for the
//! reset line and for a driver's probe to get answers instead of timeouts.
//!
//! vm-superio's `I8042Device` handles only the reset command and reads as
//! zero (no data, ever), which leaves a probing guest polling; this model
//! answers the controller's commands and acknowledges keyboard commands.
//! There is no auxiliary (mouse) port and no keyboard input.

use std::collections::VecDeque;

use vm_superio::Trigger;

use crate::bus::{BusDevice, PlatformRequest};
use crate::serial::IrqLine;

pub const I8042_BASE: u64 = 0x60;
/// 0x60 (data) to 0x64 (status/command); 0x61 belongs to KVM's PIT.
pub const I8042_WINDOW: u64 = 5;
pub const I8042_KBD_IRQ: u32 = 1;

const DATA: u64 = 0;
const COMMAND: u64 = 4;

const STATUS_OUTPUT_FULL: u8 = 1 << 0;
const STATUS_SYSTEM: u8 = 1 << 2;
const STATUS_LAST_WAS_COMMAND: u8 = 1 << 3;
const STATUS_UNLOCKED: u8 = 1 << 4;

const CTR_KBD_INTERRUPT: u8 = 1 << 0;
const CTR_SYSTEM: u8 = 1 << 2;
const CTR_KBD_DISABLED: u8 = 1 << 4;
const CTR_AUX_DISABLED: u8 = 1 << 5;
const CTR_TRANSLATE: u8 = 1 << 6;

const CMD_READ_CTR: u8 = 0x20;
const CMD_WRITE_CTR: u8 = 0x60;
const CMD_AUX_DISABLE: u8 = 0xa7;
const CMD_AUX_ENABLE: u8 = 0xa8;
const CMD_AUX_TEST: u8 = 0xa9;
const CMD_SELF_TEST: u8 = 0xaa;
const CMD_KBD_TEST: u8 = 0xab;
const CMD_KBD_DISABLE: u8 = 0xad;
const CMD_KBD_ENABLE: u8 = 0xae;
const CMD_READ_OUTPUT_PORT: u8 = 0xd0;
const CMD_WRITE_OUTPUT_PORT: u8 = 0xd1;
const CMD_WRITE_KBD_BUFFER: u8 = 0xd2;
const CMD_WRITE_AUX_BUFFER: u8 = 0xd3;
const CMD_WRITE_AUX: u8 = 0xd4;
const CMD_PULSE_RESET: u8 = 0xfe;

const SELF_TEST_PASSED: u8 = 0x55;
const KBD_ACK: u8 = 0xfa;
const KBD_SELF_TEST_PASSED: u8 = 0xaa;
const AUX_ABSENT: u8 = 0xff;
/// Output port: bit 0 is the CPU reset line (active low), bit 1 gate A20.
const OUTPUT_PORT: u8 = 0x03;
/// Controller replies queued beyond this are dropped.
const QUEUE_LIMIT: usize = 16;

pub struct I8042 {
    output: VecDeque<u8>,
    /// Last byte read from the data port, repeated while nothing is queued.
    last: u8,
    ctr: u8,
    /// Command waiting for its data byte.
    pending: Option<u8>,
    last_was_command: bool,
    irq: Option<IrqLine>,
}

const I8042_STATE_LEN: usize = 6 + QUEUE_LIMIT;

/// The controller's saved state: its queued replies and registers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct I8042State {
    /// At most 16 bytes waiting on the data port.
    pub output: Vec<u8>,
    pub last: u8,
    pub ctr: u8,
    pub pending: Option<u8>,
    pub last_was_command: bool,
}

impl I8042State {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![
            self.last,
            self.ctr,
            u8::from(self.pending.is_some()),
            self.pending.unwrap_or(0),
            u8::from(self.last_was_command),
            self.output.len() as u8,
        ];
        let mut queue = [0u8; QUEUE_LIMIT];
        queue[..self.output.len()].copy_from_slice(&self.output);
        out.extend_from_slice(&queue);
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, crate::state::DeviceStateError> {
        use crate::state::DeviceStateError;
        let mut c = crate::state::exact("i8042", bytes, I8042_STATE_LEN)?;
        let last = c.u8();
        let ctr = c.u8();
        let has_pending = c.flag("i8042 pending")?;
        let pending = c.u8();
        let last_was_command = c.flag("i8042 last_was_command")?;
        let len = c.u8() as usize;
        let queue = c.bytes::<QUEUE_LIMIT>();
        if len > QUEUE_LIMIT || queue[len..].iter().any(|&b| b != 0) {
            return Err(DeviceStateError::field("i8042", format!("queue of {len}")));
        }
        if !has_pending && pending != 0 {
            return Err(DeviceStateError::field(
                "i8042",
                "a pending byte without a command",
            ));
        }
        Ok(I8042State {
            output: queue[..len].to_vec(),
            last,
            ctr,
            pending: has_pending.then_some(pending),
            last_was_command,
        })
    }
}

impl I8042 {
    pub fn save_state(&self) -> I8042State {
        I8042State {
            output: self.output.iter().copied().collect(),
            last: self.last,
            ctr: self.ctr,
            pending: self.pending,
            last_was_command: self.last_was_command,
        }
    }

    /// Take `state` (checked by [`I8042State::decode`]).
    pub fn load_state(&mut self, state: &I8042State) {
        self.output = state.output.iter().copied().take(QUEUE_LIMIT).collect();
        self.last = state.last;
        self.ctr = state.ctr;
        self.pending = state.pending;
        self.last_was_command = state.last_was_command;
    }

    pub fn new(irq: Option<IrqLine>) -> Self {
        I8042 {
            output: VecDeque::new(),
            last: 0,
            ctr: CTR_KBD_INTERRUPT | CTR_SYSTEM | CTR_TRANSLATE | CTR_AUX_DISABLED,
            pending: None,
            last_was_command: false,
            irq,
        }
    }

    fn push(&mut self, byte: u8) {
        if self.output.len() < QUEUE_LIMIT {
            self.output.push_back(byte);
        }
        if self.ctr & CTR_KBD_INTERRUPT != 0 {
            if let Some(irq) = &self.irq {
                let _ = irq.trigger();
            }
        }
    }

    fn status(&self) -> u8 {
        let mut s = STATUS_SYSTEM | STATUS_UNLOCKED;
        if !self.output.is_empty() {
            s |= STATUS_OUTPUT_FULL;
        }
        if self.last_was_command {
            s |= STATUS_LAST_WAS_COMMAND;
        }
        s
    }

    fn command(&mut self, cmd: u8) -> Option<PlatformRequest> {
        match cmd {
            CMD_READ_CTR => self.push(self.ctr),
            CMD_WRITE_CTR
            | CMD_WRITE_OUTPUT_PORT
            | CMD_WRITE_KBD_BUFFER
            | CMD_WRITE_AUX_BUFFER
            | CMD_WRITE_AUX => self.pending = Some(cmd),
            CMD_AUX_DISABLE => self.ctr |= CTR_AUX_DISABLED,
            CMD_AUX_ENABLE => self.ctr &= !CTR_AUX_DISABLED,
            CMD_AUX_TEST => self.push(AUX_ABSENT),
            CMD_SELF_TEST => self.push(SELF_TEST_PASSED),
            CMD_KBD_TEST => self.push(0),
            CMD_KBD_DISABLE => self.ctr |= CTR_KBD_DISABLED,
            CMD_KBD_ENABLE => self.ctr &= !CTR_KBD_DISABLED,
            CMD_READ_OUTPUT_PORT => self.push(OUTPUT_PORT),
            // 0xf0-0xff pulse output port lines; bit 0 low is the reset.
            c if c & 0xf0 == 0xf0 && c & 1 == 0 => return Some(PlatformRequest::Reset),
            c if c == CMD_PULSE_RESET => return Some(PlatformRequest::Reset),
            _ => {}
        }
        None
    }

    fn data(&mut self, value: u8) -> Option<PlatformRequest> {
        match self.pending.take() {
            Some(CMD_WRITE_CTR) => self.ctr = value,
            Some(CMD_WRITE_OUTPUT_PORT) if value & 1 == 0 => return Some(PlatformRequest::Reset),
            Some(CMD_WRITE_OUTPUT_PORT) => {}
            Some(CMD_WRITE_KBD_BUFFER) => self.push(value),
            // No mouse: commands sent to it get no answer, as when the
            // aux port is empty; its loopback buffer is not emulated.
            Some(CMD_WRITE_AUX_BUFFER) | Some(CMD_WRITE_AUX) => {}
            _ => self.keyboard_command(value),
        }
        None
    }

    /// A byte for the keyboard itself.
    fn keyboard_command(&mut self, value: u8) {
        match value {
            0xff => {
                self.push(KBD_ACK);
                self.push(KBD_SELF_TEST_PASSED);
            }
            0xf2 => {
                self.push(KBD_ACK);
                self.push(0xab);
                self.push(0x83);
            }
            0xee => self.push(0xee),
            _ => self.push(KBD_ACK),
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0xff);
        let value = match offset {
            DATA => {
                if let Some(b) = self.output.pop_front() {
                    self.last = b;
                }
                self.last
            }
            COMMAND => self.status(),
            _ => return,
        };
        if let Some(first) = data.first_mut() {
            *first = value;
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Option<PlatformRequest> {
        let &value = data.first()?;
        match offset {
            DATA => {
                self.last_was_command = false;
                self.data(value)
            }
            COMMAND => {
                self.last_was_command = true;
                self.command(value)
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(dev: &mut I8042, offset: u64) -> u8 {
        let mut b = [0u8];
        dev.read(offset, &mut b);
        b[0]
    }

    #[test]
    fn answers_controller_commands() {
        let mut k = I8042::new(None);
        assert_eq!(read(&mut k, COMMAND) & STATUS_OUTPUT_FULL, 0);
        k.write(COMMAND, &[CMD_SELF_TEST]);
        assert_ne!(read(&mut k, COMMAND) & STATUS_OUTPUT_FULL, 0);
        assert_eq!(read(&mut k, DATA), SELF_TEST_PASSED);
        k.write(COMMAND, &[CMD_WRITE_CTR]);
        k.write(DATA, &[0x30]);
        k.write(COMMAND, &[CMD_READ_CTR]);
        assert_eq!(read(&mut k, DATA), 0x30);
        k.write(DATA, &[0xff]);
        assert_eq!(
            (read(&mut k, DATA), read(&mut k, DATA)),
            (KBD_ACK, KBD_SELF_TEST_PASSED)
        );
    }

    #[test]
    fn reset_by_pulse_and_by_output_port() {
        let mut k = I8042::new(None);
        assert_eq!(
            k.write(COMMAND, &[CMD_PULSE_RESET]),
            Some(PlatformRequest::Reset)
        );
        assert_eq!(k.write(COMMAND, &[CMD_WRITE_OUTPUT_PORT]), None);
        assert_eq!(k.write(DATA, &[0x02]), Some(PlatformRequest::Reset));
        assert_eq!(k.write(COMMAND, &[0xff]), None, "pulse with no line low");
    }

    #[test]
    fn a_flood_of_commands_stays_bounded() {
        let mut k = I8042::new(None);
        for _ in 0..10_000 {
            k.write(DATA, &[0xf2]);
        }
        assert!(k.output.len() <= QUEUE_LIMIT);
        let mut wide = [0u8; 4];
        k.read(2, &mut wide);
        assert_eq!(wide, [0xff; 4]);
        assert_eq!(k.write(1, &[]), None);
    }
}
