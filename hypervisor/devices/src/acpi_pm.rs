//! The ACPI fixed-hardware register blocks of a PC platform: PM1a event
//! (status/enable), PM1a control, the PM timer and GPE0, in one 16-byte
//! port window (Xen's HVM layout at 0x1f40).
//!
//! The PM timer is what a guest calibrates its TSC and local APIC timer
//! against when no hypervisor tells it their rates. Nothing raises an SCI:
//! there are no power-button or GPE events to deliver yet.

use std::time::Instant;

use crate::bus::{BusDevice, PlatformRequest};

pub const ACPI_PM_BASE: u64 = 0x1f40;
pub const ACPI_PM_WINDOW: u64 = 0x10;

// PM1 status (0x0) and GPE0 status (0xc) are write-one-to-clear and no
// event ever sets them: they read as zero.
const PM1_ENABLE: usize = 0x2;
const PM1_CONTROL: usize = 0x4;
const PM_TIMER: usize = 0x8;
const GPE0_ENABLE: usize = 0xe;

/// PM1 control: SCI_EN (ACPI mode is always on), SLP_TYP and SLP_EN.
const SCI_ENABLE: u16 = 1 << 0;
const SLEEP_TYPE_SHIFT: u16 = 10;
const SLEEP_TYPE_MASK: u16 = 0x7;
const SLEEP_ENABLE: u16 = 1 << 13;
/// The soft-off sleep type the DSDT's `_S5` declares.
pub const SLEEP_TYPE_S5: u16 = 5;

/// The PM timer runs at 3.579545 MHz.
const PM_TIMER_HZ: u128 = 3_579_545;

pub struct AcpiPm {
    pm1_enable: u16,
    pm1_control: u16,
    gpe0_enable: u16,
    started: Instant,
    /// The timer's value at `started` (a restored domain's timer goes on
    /// from where the saved one was, never backwards).
    timer_base: u32,
}

const ACPI_PM_STATE_LEN: usize = 10;

/// The PM block's saved registers and its timer's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AcpiPmState {
    pub pm1_enable: u16,
    pub pm1_control: u16,
    pub gpe0_enable: u16,
    pub timer: u32,
}

impl AcpiPmState {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(ACPI_PM_STATE_LEN);
        out.extend_from_slice(&self.pm1_enable.to_le_bytes());
        out.extend_from_slice(&self.pm1_control.to_le_bytes());
        out.extend_from_slice(&self.gpe0_enable.to_le_bytes());
        out.extend_from_slice(&self.timer.to_le_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, crate::state::DeviceStateError> {
        let mut c = crate::state::exact("ACPI PM", bytes, ACPI_PM_STATE_LEN)?;
        let state = AcpiPmState {
            pm1_enable: c.u16(),
            pm1_control: c.u16(),
            gpe0_enable: c.u16(),
            timer: c.u32(),
        };
        // SLP_EN never reads back and ACPI mode is always on.
        if state.pm1_control & SLEEP_ENABLE != 0 || state.pm1_control & SCI_ENABLE == 0 {
            return Err(crate::state::DeviceStateError::field(
                "ACPI PM",
                format!("PM1 control {:#x}", state.pm1_control),
            ));
        }
        Ok(state)
    }
}

impl Default for AcpiPm {
    fn default() -> Self {
        Self::new()
    }
}

impl AcpiPm {
    pub fn new() -> Self {
        AcpiPm {
            pm1_enable: 0,
            pm1_control: SCI_ENABLE,
            gpe0_enable: 0,
            started: Instant::now(),
            timer_base: 0,
        }
    }

    fn timer(&self) -> u32 {
        let ticks = (self.started.elapsed().as_nanos() * PM_TIMER_HZ / 1_000_000_000) as u32;
        self.timer_base.wrapping_add(ticks)
    }

    pub fn save_state(&self) -> AcpiPmState {
        AcpiPmState {
            pm1_enable: self.pm1_enable,
            pm1_control: self.pm1_control,
            gpe0_enable: self.gpe0_enable,
            timer: self.timer(),
        }
    }

    /// Take `state` (checked by [`AcpiPmState::decode`]); the timer runs on
    /// from its saved value.
    pub fn load_state(&mut self, state: &AcpiPmState) {
        self.pm1_enable = state.pm1_enable;
        self.pm1_control = (state.pm1_control & !SLEEP_ENABLE) | SCI_ENABLE;
        self.gpe0_enable = state.gpe0_enable;
        self.started = Instant::now();
        self.timer_base = state.timer;
    }

    fn registers(&self) -> [u8; ACPI_PM_WINDOW as usize] {
        let mut r = [0u8; ACPI_PM_WINDOW as usize];
        r[PM1_ENABLE..PM1_ENABLE + 2].copy_from_slice(&self.pm1_enable.to_le_bytes());
        r[PM1_CONTROL..PM1_CONTROL + 2].copy_from_slice(&self.pm1_control.to_le_bytes());
        r[PM_TIMER..PM_TIMER + 4].copy_from_slice(&self.timer().to_le_bytes());
        r[GPE0_ENABLE..GPE0_ENABLE + 2].copy_from_slice(&self.gpe0_enable.to_le_bytes());
        r
    }
}

impl BusDevice for AcpiPm {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let regs = self.registers();
        for (i, b) in data.iter_mut().enumerate() {
            *b = regs.get(offset as usize + i).copied().unwrap_or(0xff);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Option<PlatformRequest> {
        let mut regs = self.registers();
        let start = offset as usize;
        for (i, &b) in data.iter().enumerate() {
            if let Some(slot) = regs.get_mut(start + i) {
                *slot = b;
            }
        }
        let touches = |reg: usize| start < reg + 2 && reg < start + data.len();
        let word = |reg: usize| u16::from_le_bytes([regs[reg], regs[reg + 1]]);
        if touches(PM1_ENABLE) {
            self.pm1_enable = word(PM1_ENABLE);
        }
        if touches(GPE0_ENABLE) {
            self.gpe0_enable = word(GPE0_ENABLE);
        }
        if touches(PM1_CONTROL) {
            let value = word(PM1_CONTROL);
            // SLP_EN is write-only: it triggers and never reads back.
            self.pm1_control = (value & !SLEEP_ENABLE) | SCI_ENABLE;
            if value & SLEEP_ENABLE != 0 {
                let kind = (value >> SLEEP_TYPE_SHIFT) & SLEEP_TYPE_MASK;
                if kind == SLEEP_TYPE_S5 {
                    return Some(PlatformRequest::PowerOff);
                }
                tracing::debug!(kind, "ACPI sleep state not supported");
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timer_counts_at_acpi_rate() {
        let mut pm = AcpiPm::new();
        let mut a = [0u8; 4];
        let mut b = [0u8; 4];
        let before_a = Instant::now();
        pm.read(PM_TIMER as u64, &mut a);
        let after_a = Instant::now();
        // The interval being measured, not a wait for anything.
        std::thread::sleep(std::time::Duration::from_millis(20));
        let before_b = Instant::now();
        pm.read(PM_TIMER as u64, &mut b);
        let after_b = Instant::now();
        let ticks = u32::from_le_bytes(b).wrapping_sub(u32::from_le_bytes(a)) as u128;
        // Compared with the time that surely passed between the reads and
        // the most that could have, so a slow scheduler cannot fail it; one
        // tick of slack on each side for the truncation.
        let at_rate = |d: std::time::Duration| d.as_nanos() * PM_TIMER_HZ / 1_000_000_000;
        let least = at_rate(before_b - after_a);
        let most = at_rate(after_b - before_a);
        assert!(
            least.saturating_sub(1) <= ticks && ticks <= most + 1,
            "{ticks} ticks, expected {least}..={most}"
        );
        assert!(
            least >= 71_590,
            "the interval is at least 20 ms: {least} ticks"
        );
    }

    #[test]
    fn s5_through_pm1_control_powers_off() {
        let mut pm = AcpiPm::new();
        let mut c = [0u8; 2];
        pm.read(PM1_CONTROL as u64, &mut c);
        assert_eq!(u16::from_le_bytes(c) & SCI_ENABLE, SCI_ENABLE);
        let s3 = (3 << SLEEP_TYPE_SHIFT) | SLEEP_ENABLE;
        assert_eq!(pm.write(PM1_CONTROL as u64, &s3.to_le_bytes()), None);
        let s5 = (SLEEP_TYPE_S5 << SLEEP_TYPE_SHIFT) | SLEEP_ENABLE;
        assert_eq!(
            pm.write(PM1_CONTROL as u64, &s5.to_le_bytes()),
            Some(PlatformRequest::PowerOff)
        );
        // Byte writes of the high half alone work too.
        assert_eq!(
            pm.write(PM1_CONTROL as u64 + 1, &[(s5 >> 8) as u8]),
            Some(PlatformRequest::PowerOff)
        );
    }

    #[test]
    fn state_round_trips_and_the_timer_goes_on() {
        let mut pm = AcpiPm::new();
        pm.write(PM1_ENABLE as u64, &[0x20, 0x01]);
        let mut saved = pm.save_state();
        saved.timer = 0xfff0_0000;
        let bytes = saved.encode();
        assert_eq!(AcpiPmState::decode(&bytes).unwrap(), saved);
        let mut other = AcpiPm::new();
        other.load_state(&saved);
        let mut t = [0u8; 4];
        other.read(PM_TIMER as u64, &mut t);
        assert!(u32::from_le_bytes(t) >= 0xfff0_0000, "not reset to zero");
        let mut e = [0u8; 2];
        other.read(PM1_ENABLE as u64, &mut e);
        assert_eq!(e, [0x20, 0x01]);
        let mut bad = bytes.clone();
        bad[3] |= (SLEEP_ENABLE >> 8) as u8;
        assert!(AcpiPmState::decode(&bad).is_err(), "SLP_EN saved");
        assert!(AcpiPmState::decode(&bytes[..9]).is_err());
    }

    #[test]
    fn odd_accesses_are_harmless() {
        let mut pm = AcpiPm::new();
        let mut wide = [0u8; 8];
        pm.read(12, &mut wide);
        assert_eq!(&wide[4..], &[0xff; 4]);
        assert_eq!(pm.write(15, &[1, 2, 3, 4]), None);
        pm.write(PM1_ENABLE as u64, &[0x20, 0x01]);
        let mut e = [0u8; 2];
        pm.read(PM1_ENABLE as u64, &mut e);
        assert_eq!(e, [0x20, 0x01]);
    }
}
