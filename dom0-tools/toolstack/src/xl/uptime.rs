//! `xl uptime` (xl_info.c: print_uptime, uptime_to_string): the long and
//! the `-s` short form.

/// Uptime as xl writes it: `2:03:04`, `1 day,  2:03:04`,
/// `3 days, 12:00:00`; `short` drops the seconds (`xl uptime -s`).
pub fn uptime_to_string(secs: u64, short: bool) -> String {
    let day = secs / 86400;
    let hour = secs % 86400 / 3600;
    let min = secs % 3600 / 60;
    let sec = secs % 60;
    let days = match day {
        0 => String::new(),
        1 => "1 day, ".to_string(),
        d => format!("{d} days, "),
    };
    if short {
        format!("{days}{hour:>2}:{min:02}")
    } else {
        format!("{days}{hour:>2}:{min:02}:{sec:02}")
    }
}

/// The header of `xl uptime`.
pub fn uptime_header() -> String {
    format!("{:<33} {:>4} {}\n", "Name", "ID", "Uptime")
}

/// One line of `xl uptime`.
pub fn uptime_row(name: &str, domid: u32, secs: u64) -> String {
    format!("{name:<33} {domid:>4} {}\n", uptime_to_string(secs, false))
}

/// One line of `xl uptime -s`; `now` is the local time as `HH:MM:SS`.
pub fn uptime_short_row(now: &str, name: &str, domid: u32, secs: u64) -> String {
    format!(
        " {now} up {}, {name} ({domid})\n",
        uptime_to_string(secs, true)
    )
}
