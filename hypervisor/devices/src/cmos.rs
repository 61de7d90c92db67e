//! The MC146818 CMOS real-time clock and its 128 bytes of NVRAM at ports
//! 0x70 (index, bit 7 masks NMI) and 0x71 (data).
//!
//! The clock follows the host's UTC clock plus whatever offset the guest
//! sets by writing the time registers. Update-ended, alarm and periodic
//! interrupts are not generated; register C reads as no events pending.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::bus::{BusDevice, PlatformRequest};

pub const CMOS_BASE: u64 = 0x70;
pub const CMOS_WINDOW: u64 = 2;

const INDEX: u64 = 0;
const DATA: u64 = 1;

const REG_SECONDS: usize = 0x00;
const REG_MINUTES: usize = 0x02;
const REG_HOURS: usize = 0x04;
const REG_WEEKDAY: usize = 0x06;
const REG_DAY: usize = 0x07;
const REG_MONTH: usize = 0x08;
const REG_YEAR: usize = 0x09;
const REG_A: usize = 0x0a;
const REG_B: usize = 0x0b;
const REG_C: usize = 0x0c;
const REG_D: usize = 0x0d;
const REG_CENTURY: usize = 0x32;

/// Register A: 32.768 kHz time base, 1024 Hz rate; update-in-progress off.
const REG_A_DEFAULT: u8 = 0x26;
/// Register B: 24-hour mode, BCD.
const REG_B_24H: u8 = 1 << 1;
const REG_B_BINARY: u8 = 1 << 2;
const REG_B_SET: u8 = 1 << 7;
/// Register D: the battery is good.
const REG_D_VALID_RAM: u8 = 1 << 7;
const REG_A_WRITABLE: u8 = 0x7f;
const REG_B_HOUR_PM: u8 = 0x80;

const TIME_REGS: [usize; 7] = [
    REG_SECONDS,
    REG_MINUTES,
    REG_HOURS,
    REG_DAY,
    REG_MONTH,
    REG_YEAR,
    REG_CENTURY,
];

/// The clock's registers, 0x0..0xd (seconds through register D): the
/// part of the CMOS a save image's RTC record carries.
pub const CLOCK_REGISTERS: usize = 14;

/// The clock's state as a save image carries it: the time and control
/// registers, the index register and the guest clock's offset from the
/// host's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CmosClockState {
    /// Registers 0x0..0xd, the time ones as the guest would read them now
    /// (or as it froze them with register B's SET bit).
    pub registers: [u8; CLOCK_REGISTERS],
    /// The index last written to port 0x70, NMI bit stripped (0..=0x7f).
    pub index: u8,
    /// Guest RTC time minus host UTC time, in seconds.
    pub offset_secs: i64,
}

pub struct Cmos {
    index: usize,
    nvram: [u8; 128],
    /// Guest RTC time minus host UTC time, in seconds.
    offset: i64,
}

impl Cmos {
    /// `ram_below_4g` and `ram_above_4g` fill the memory-size bytes that
    /// firmware traditionally leaves in NVRAM.
    pub fn new(ram_below_4g: u64, ram_above_4g: u64) -> Self {
        let mut nvram = [0u8; 128];
        nvram[REG_A] = REG_A_DEFAULT;
        nvram[REG_B] = REG_B_24H;
        nvram[REG_D] = REG_D_VALID_RAM;
        // Base memory in KiB; extended memory (1-64 MiB) in KiB; memory
        // above 16 MiB and above 4 GiB in 64 KiB units.
        nvram[0x15..0x17].copy_from_slice(&640u16.to_le_bytes());
        let ext_kib = (ram_below_4g.saturating_sub(1 << 20) >> 10).min(0xfc00) as u16;
        nvram[0x17..0x19].copy_from_slice(&ext_kib.to_le_bytes());
        nvram[0x30..0x32].copy_from_slice(&ext_kib.to_le_bytes());
        let above_16m = (ram_below_4g.saturating_sub(16 << 20) >> 16).min(0xffff) as u16;
        nvram[0x34..0x36].copy_from_slice(&above_16m.to_le_bytes());
        let above_4g = (ram_above_4g >> 16).min(0xff_ffff) as u32;
        nvram[0x5b..0x5e].copy_from_slice(&above_4g.to_le_bytes()[..3]);
        Cmos {
            index: 0,
            nvram,
            offset: 0,
        }
    }

    /// The clock's state for a save image. The time registers are brought
    /// up to date first so the image holds what the guest would read.
    pub fn save_clock(&mut self) -> CmosClockState {
        self.latch_time();
        let mut registers = [0; CLOCK_REGISTERS];
        registers.copy_from_slice(&self.nvram[..CLOCK_REGISTERS]);
        CmosClockState {
            registers,
            // The index is stored masked to 7 bits; the cast cannot lose any.
            index: (self.index & 0x7f) as u8,
            offset_secs: self.offset,
        }
    }

    /// Takes a saved clock. Register C reads as 0 regardless (no interrupt
    /// source is emulated); the time registers keep the saved bytes only
    /// while register B's SET bit freezes them, and otherwise follow the
    /// host's clock plus `offset_secs` from the next read on.
    pub fn load_clock(&mut self, state: &CmosClockState) {
        self.nvram[..CLOCK_REGISTERS].copy_from_slice(&state.registers);
        self.nvram[REG_A] &= REG_A_WRITABLE;
        self.index = usize::from(state.index & 0x7f);
        self.offset = state.offset_secs;
    }

    fn host_now() -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0)
    }

    fn encode(&self, value: u8) -> u8 {
        if self.nvram[REG_B] & REG_B_BINARY != 0 {
            value
        } else {
            ((value / 10) << 4) | (value % 10)
        }
    }

    fn decode(&self, value: u8) -> u8 {
        if self.nvram[REG_B] & REG_B_BINARY != 0 {
            value
        } else {
            (value >> 4).saturating_mul(10).saturating_add(value & 0xf)
        }
    }

    /// Refresh the time registers from the clock (unless the guest holds
    /// them with the SET bit while it writes a new time).
    fn latch_time(&mut self) {
        if self.nvram[REG_B] & REG_B_SET != 0 {
            return;
        }
        let t = civil_from_unix(Self::host_now().saturating_add(self.offset));
        self.nvram[REG_SECONDS] = self.encode(t.second);
        self.nvram[REG_MINUTES] = self.encode(t.minute);
        self.nvram[REG_HOURS] = if self.nvram[REG_B] & REG_B_24H != 0 {
            self.encode(t.hour)
        } else {
            let h12 = match t.hour % 12 {
                0 => 12,
                h => h,
            };
            self.encode(h12) | if t.hour >= 12 { REG_B_HOUR_PM } else { 0 }
        };
        self.nvram[REG_WEEKDAY] = self.encode(t.weekday);
        self.nvram[REG_DAY] = self.encode(t.day);
        self.nvram[REG_MONTH] = self.encode(t.month);
        self.nvram[REG_YEAR] = self.encode((t.year % 100) as u8);
        self.nvram[REG_CENTURY] = self.encode((t.year / 100) as u8);
    }

    /// The guest finished setting the time: keep it as an offset.
    fn adopt_guest_time(&mut self) {
        let hour_reg = self.nvram[REG_HOURS];
        let mut hour = self.decode(hour_reg & 0x7f);
        if self.nvram[REG_B] & REG_B_24H == 0 {
            hour %= 12;
            if hour_reg & REG_B_HOUR_PM != 0 {
                hour += 12;
            }
        }
        let year = self.decode(self.nvram[REG_CENTURY]) as i64 * 100
            + self.decode(self.nvram[REG_YEAR]) as i64;
        let guest = unix_from_civil(
            year,
            self.decode(self.nvram[REG_MONTH]),
            self.decode(self.nvram[REG_DAY]),
        )
        .saturating_add(hour as i64 * 3600)
        .saturating_add(self.decode(self.nvram[REG_MINUTES]) as i64 * 60)
        .saturating_add(self.decode(self.nvram[REG_SECONDS]) as i64);
        self.offset = guest.saturating_sub(Self::host_now());
    }

    fn read_register(&mut self) -> u8 {
        match self.index {
            r if TIME_REGS.contains(&r) || r == REG_WEEKDAY => {
                self.latch_time();
                self.nvram[r]
            }
            // No interrupt sources are emulated: nothing is ever flagged.
            REG_C => 0,
            r => self.nvram[r],
        }
    }

    fn write_register(&mut self, value: u8) {
        match self.index {
            REG_A => self.nvram[REG_A] = value & REG_A_WRITABLE,
            REG_B => {
                let was_set = self.nvram[REG_B] & REG_B_SET != 0;
                if !was_set && value & REG_B_SET != 0 {
                    // Freeze the registers at the current time first.
                    self.latch_time();
                }
                self.nvram[REG_B] = value;
                if was_set && value & REG_B_SET == 0 {
                    self.adopt_guest_time();
                }
            }
            REG_C | REG_D => {}
            r if TIME_REGS.contains(&r) || r == REG_WEEKDAY => {
                if self.nvram[REG_B] & REG_B_SET == 0 {
                    self.latch_time();
                    self.nvram[r] = value;
                    self.adopt_guest_time();
                } else {
                    self.nvram[r] = value;
                }
            }
            r => self.nvram[r] = value,
        }
    }
}

impl BusDevice for Cmos {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0xff);
        if offset == DATA {
            let v = self.read_register();
            if let Some(first) = data.first_mut() {
                *first = v;
            }
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Option<PlatformRequest> {
        let &value = data.first()?;
        match offset {
            // Bit 7 is the NMI mask; there is no NMI source to mask.
            INDEX => self.index = (value & 0x7f) as usize,
            DATA => self.write_register(value),
            _ => {}
        }
        None
    }
}

#[derive(Debug, PartialEq, Eq)]
struct Civil {
    year: i64,
    month: u8,
    day: u8,
    hour: u8,
    minute: u8,
    second: u8,
    /// 1 = Sunday.
    weekday: u8,
}

/// Days since 1970-01-01 to a proleptic Gregorian date (era arithmetic on
/// 400-year cycles of 146097 days, March-based years).
fn civil_from_days(days: i64) -> (i64, u8, u8) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let year = yoe + era * 400 + if month <= 2 { 1 } else { 0 };
    (year, month, day)
}

fn days_from_civil(year: i64, month: u8, day: u8) -> i64 {
    let month = month.clamp(1, 12) as i64;
    let day = day.clamp(1, 31) as i64;
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_unix(secs: i64) -> Civil {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    Civil {
        year,
        month,
        day,
        hour: (rem / 3600) as u8,
        minute: (rem / 60 % 60) as u8,
        second: (rem % 60) as u8,
        // 1970-01-01 was a Thursday (5 when Sunday is 1).
        weekday: ((days + 4).rem_euclid(7) + 1) as u8,
    }
}

fn unix_from_civil(year: i64, month: u8, day: u8) -> i64 {
    days_from_civil(year, month, day).saturating_mul(86_400)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(c: &mut Cmos, r: u8) -> u8 {
        c.write(INDEX, &[r]);
        let mut b = [0u8];
        c.read(DATA, &mut b);
        b[0]
    }

    #[test]
    fn calendar_conversions_round_trip() {
        assert_eq!(
            civil_from_unix(0),
            Civil {
                year: 1970,
                month: 1,
                day: 1,
                hour: 0,
                minute: 0,
                second: 0,
                weekday: 5
            }
        );
        // 2024-02-29 12:34:56 UTC, a Thursday.
        let t = civil_from_unix(1_709_210_096);
        assert_eq!(
            (t.year, t.month, t.day, t.hour, t.minute, t.second, t.weekday),
            (2024, 2, 29, 12, 34, 56, 5)
        );
        for days in [-1_000_000i64, -1, 0, 59, 11_016, 20_000, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }

    #[test]
    fn reads_host_time_in_bcd_and_keeps_a_guest_set_time() {
        let mut c = Cmos::new(512 << 20, 0);
        assert_eq!(reg(&mut c, REG_D as u8), REG_D_VALID_RAM);
        let century = reg(&mut c, REG_CENTURY as u8);
        assert_eq!(century, 0x20, "BCD century");
        // Set 2001-02-03 04:05:06 in binary mode.
        c.write(INDEX, &[REG_B as u8]);
        c.write(DATA, &[REG_B_SET | REG_B_24H | REG_B_BINARY]);
        for (r, v) in [
            (REG_YEAR, 1u8),
            (REG_MONTH, 2),
            (REG_DAY, 3),
            (REG_HOURS, 4),
            (REG_MINUTES, 5),
            (REG_SECONDS, 6),
            (REG_CENTURY, 20),
        ] {
            c.write(INDEX, &[r as u8]);
            c.write(DATA, &[v]);
        }
        c.write(INDEX, &[REG_B as u8]);
        c.write(DATA, &[REG_B_24H | REG_B_BINARY]);
        assert_eq!(reg(&mut c, REG_YEAR as u8), 1);
        assert_eq!(reg(&mut c, REG_MONTH as u8), 2);
        assert_eq!(reg(&mut c, REG_DAY as u8), 3);
        assert_eq!(reg(&mut c, REG_HOURS as u8), 4);
    }

    #[test]
    fn clock_state_survives_save_and_load() {
        let mut source = Cmos::new(512 << 20, 0);
        // A guest that set its clock a day ahead, in binary 12-hour mode,
        // and left the index on register B.
        c_write(&mut source, REG_B, REG_B_SET | REG_B_BINARY);
        for (r, v) in [
            (REG_YEAR, 30u8),
            (REG_MONTH, 6),
            (REG_DAY, 15),
            (REG_CENTURY, 20),
        ] {
            c_write(&mut source, r, v);
        }
        c_write(&mut source, REG_B, REG_B_BINARY);
        source.write(INDEX, &[0x80 | REG_B as u8]);
        let saved = source.save_clock();
        assert_eq!(saved.index, REG_B as u8, "NMI bit stripped");
        assert_eq!(saved.registers[REG_B], REG_B_BINARY);
        assert_eq!(saved.registers[REG_YEAR], 30, "the latched year");
        assert_ne!(saved.offset_secs, 0);

        let mut target = Cmos::new(512 << 20, 0);
        target.load_clock(&saved);
        // The index carried over: a read of port 0x71 is register B.
        let mut value = [0u8];
        target.read(DATA, &mut value);
        assert_eq!(value[0], REG_B_BINARY);
        assert_eq!(reg(&mut target, REG_YEAR as u8), 30);
        assert_eq!(reg(&mut target, REG_MONTH as u8), 6);
        assert_eq!(reg(&mut target, REG_CENTURY as u8), 20);
        let again = target.save_clock();
        assert!((again.offset_secs - saved.offset_secs).abs() <= 1);
    }

    fn c_write(c: &mut Cmos, register: usize, value: u8) {
        c.write(INDEX, &[register as u8]);
        c.write(DATA, &[value]);
    }

    #[test]
    fn nvram_holds_memory_size_and_survives_garbage() {
        let mut c = Cmos::new(512 << 20, 1 << 30);
        let lo = reg(&mut c, 0x34) as u16 | (reg(&mut c, 0x35) as u16) << 8;
        assert_eq!(lo as u64, (512 - 16) << 20 >> 16);
        // Junk in every register, with the NMI bit, never panics.
        for r in 0..=255u8 {
            c.write(INDEX, &[r]);
            c.write(DATA, &[0xff]);
            let mut b = [0u8; 2];
            c.read(DATA, &mut b);
        }
    }
}
