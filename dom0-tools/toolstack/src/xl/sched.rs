//! `xl sched-credit` and `xl vcpu-pin` (xl_sched.c, xl_vcpu.c and
//! xl_parse.c: parse_cpurange; libxl_sched.c for the checks): the table,
//! the CPU-list syntax, the range checks and their messages.

use serde::{Deserialize, Serialize};

/// Xen's default credit weight (and what a domain without `cpu_weight`
/// gets).
pub const DEFAULT_WEIGHT: u32 = 256;

/// libxl's "leave it as it is" value for a weight or cap
/// (`LIBXL_DOMAIN_SCHED_PARAM_{WEIGHT,CAP}_DEFAULT`): `xl sched-credit -c
/// -1` changes nothing, as in xl.
pub const PARAM_UNCHANGED: i64 = -1;

/// A domain's credit scheduler settings as `xl sched-credit` shows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreditParams {
    pub weight: u32,
    /// Percent of one CPU; 0 is no cap.
    pub cap: u32,
}

impl Default for CreditParams {
    fn default() -> Self {
        CreditParams {
            weight: DEFAULT_WEIGHT,
            cap: 0,
        }
    }
}

/// The header of the domain table (sched_credit_domain_output).
pub fn sched_credit_header() -> String {
    format!("{:<33} {:>4} {:>6} {:>4}\n", "Name", "ID", "Weight", "Cap")
}

/// One domain's line of the table.
pub fn sched_credit_row(name: &str, domid: u32, p: &CreditParams) -> String {
    format!("{name:<33} {domid:>4} {:>6} {:>4}\n", p.weight, p.cap)
}

/// The pool line `xl sched-credit` prints before listing all domains, or
/// alone for `-s`, when the pool's time slice and rate limit cannot be
/// read (sched_credit_pool_output). Linux's scheduler has no per-pool
/// credit parameters, so kxen always prints this form.
pub fn sched_credit_pool_unavailable(pool: &str) -> String {
    format!("Cpupool {pool}: [sched params unavailable]\n")
}

/// The one CPU pool kxen has (libxl's default pool).
pub const POOL0: &str = "Pool-0";

/// `-w`/`-c` without `-d` (main_sched_credit); exit 1.
pub const MUST_SPECIFY_DOMAIN: &str = "Must specify a domain.";
/// `-p`/`-s` together with `-d`/`-w`/`-c`; exit 1.
pub const NO_POOL_WITH_DOMAIN_OPTIONS: &str =
    "Specifying a cpupool or schedparam is not allowed with domain options.";
/// `-t`/`-r`/`-m` without `-s`; exit 1.
pub const MUST_SPECIFY_SCHEDPARAM: &str =
    "Must specify schedparam to set schedule parameter values.";
/// `-s` with values to set: xl reads the pool's parameters first, and
/// kxen has none; exit 1.
pub const CREDIT_PARAMS_GET_FAILED: &str = "libxl_sched_credit_params_get failed.";
/// Any failure to change a domain's weight or cap; exit 1.
pub const SCHED_PARAMS_SET_FAILED: &str = "libxl_domain_sched_params_set failed.";
/// `-p` with a pool other than [`POOL0`]: `unknown cpupool 'X'`; exit 1.
pub fn unknown_cpupool(pool: &str) -> String {
    format!("unknown cpupool '{pool}'")
}

/// A libxl error line about domain `domid` (libxl's LOGD), without the
/// source file and line libxl adds.
pub fn libxl_error(domid: u32, msg: &str) -> String {
    format!("libxl: error: Domain {domid}:{msg}")
}

/// C's `strtol(s, &end, 10)`: leading blanks, a sign, digits; the value
/// (saturated) and whether any digit was read.
pub fn strtol(s: &str) -> (i64, bool) {
    let t = s.trim_start_matches([' ', '\t', '\n', '\r', '\x0b', '\x0c']);
    let (negative, digits) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    let end = digits
        .bytes()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(digits.len());
    if end == 0 {
        return (0, false);
    }
    let mut value: i64 = 0;
    for b in digits[..end].bytes() {
        value = value.saturating_mul(10).saturating_add(i64::from(b - b'0'));
    }
    (if negative { -value } else { value }, true)
}

/// xl reads `-w` and `-c` with `strtol` into an `int`: junk reads as 0.
pub fn sched_option_value(s: &str) -> i64 {
    // The C code truncates a long to an int.
    i64::from(strtol(s).0 as i32)
}

/// libxl's checks of a new weight and cap (sched_credit_domain_set) for a
/// domain of `max_vcpus` vCPUs; `PARAM_UNCHANGED` (or `None`) keeps the
/// current value. The result is the settings to apply, or libxl's
/// message.
pub fn check_credit_params(
    current: CreditParams,
    weight: Option<i64>,
    cap: Option<i64>,
    max_vcpus: u32,
) -> Result<CreditParams, String> {
    let mut next = current;
    if let Some(w) = weight.filter(|&w| w != PARAM_UNCHANGED) {
        if !(1..=65535).contains(&w) {
            return Err(
                "Cpu weight out of range, valid values are within range from 1 to 65535".into(),
            );
        }
        next.weight = w as u32;
    }
    if let Some(c) = cap.filter(|&c| c != PARAM_UNCHANGED) {
        let max = i64::from(max_vcpus) * 100;
        if !(0..=max).contains(&c) {
            return Err(format!(
                "Cpu cap out of range, valid range is from 0 to {max} for specified number of vcpus"
            ));
        }
        next.cap = c as u32;
    }
    Ok(next)
}

/// Which vCPUs `xl vcpu-pin DOMAIN VCPU ...` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum VcpuSelector {
    One(u32),
    All,
}

/// xl's reading of the VCPU argument (main_vcpupin): a number (with
/// anything after its digits ignored, as strtol does) or `all`.
pub fn parse_vcpu_selector(arg: &str) -> Result<VcpuSelector, String> {
    let (n, any) = strtol(arg);
    if any && n >= 0 {
        return Ok(VcpuSelector::One(u32::try_from(n).unwrap_or(u32::MAX)));
    }
    if arg == "all" {
        return Ok(VcpuSelector::All);
    }
    Err(format!("Error: Invalid argument {arg} as VCPU."))
}

/// `xl vcpu-pin` when setting one vCPU's affinity failed; exit 1.
pub fn could_not_set_affinity(vcpu: u32) -> String {
    format!("Could not set affinity for vcpu `{vcpu}'.")
}

/// `xl vcpu-pin D all ...` when some vCPU failed; xl still exits 0.
pub const COULD_NOT_SET_AFFINITY_ALL: &str = "Could not set affinity.";

/// C's `strtoul` on the start of `s` (blanks, an optional `+`, digits):
/// the value and the rest, or `None` without digits. (A `-` sign, which
/// strtoul would wrap around, is refused.)
fn strtoul_prefix(s: &str) -> Option<(u64, &str)> {
    let t = s.trim_start_matches([' ', '\t', '\n', '\r', '\x0b', '\x0c']);
    let t = t.strip_prefix('+').unwrap_or(t);
    let n = t.bytes().take_while(u8::is_ascii_digit).count();
    if n == 0 {
        return None;
    }
    Some((t[..n].parse().unwrap_or(u64::MAX), &t[n..]))
}

/// xl's parse_range: `N` or `N-M` with M >= N and nothing after.
fn parse_range(s: &str) -> Option<(u64, u64)> {
    let (a, rest) = strtoul_prefix(s)?;
    if rest.is_empty() {
        return Some((a, a));
    }
    let (b, rest) = strtoul_prefix(rest.strip_prefix('-')?)?;
    (rest.is_empty() && b >= a).then_some((a, b))
}

/// A CPU list in xl's syntax (xl_parse.c: parse_cpurange), as the host's
/// `nr_cpus` CPUs: comma-separated items, each `all`, `N` or `N-M`,
/// optionally prefixed by `^` (remove these) and by `node:`/`nodes:`
/// (whole NUMA nodes; kxen reports one node, 0, holding every CPU).
/// Items apply left to right to an empty set; CPUs the host does not have
/// are dropped, as libxl's bitmap of the host's size drops them.
/// Errors carry xl's message.
pub fn parse_cpurange(spec: &str, nr_cpus: u32) -> Result<Vec<u32>, String> {
    let mut set = vec![false; nr_cpus as usize];
    for item in spec.split(',').filter(|i| !i.is_empty()) {
        let (remove, item) = match item.strip_prefix('^') {
            Some(rest) => (true, rest),
            None => (false, item),
        };
        let (nodes, item) = match item
            .strip_prefix("node:")
            .or_else(|| item.strip_prefix("nodes:"))
        {
            Some(rest) => (true, rest),
            None => (false, item),
        };
        if item == "all" {
            if remove {
                return Err("Can't combine \"^\" and \"all\".".into());
            }
            set.iter_mut().for_each(|c| *c = true);
            continue;
        }
        let (a, b) = parse_range(item).ok_or_else(|| format!("Invalid pcpu range: {item}."))?;
        let cpus: Vec<u64> = if nodes {
            // Node 0 is every CPU; there are no others.
            if a == 0 {
                (0..u64::from(nr_cpus)).collect()
            } else {
                Vec::new()
            }
        } else {
            (a..=b.min(u64::from(nr_cpus))).collect()
        };
        for cpu in cpus {
            if let Some(slot) = set.get_mut(cpu as usize) {
                *slot = !remove;
            }
        }
    }
    Ok(set
        .iter()
        .enumerate()
        .filter(|(_, &on)| on)
        .map(|(cpu, _)| cpu as u32)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_format() {
        // printf("%-33s %4s %6s %4s\n", "Name", "ID", "Weight", "Cap")
        assert_eq!(
            sched_credit_header(),
            "Name                                ID Weight  Cap\n"
        );
        assert_eq!(
            sched_credit_row(
                "Domain-0",
                0,
                &CreditParams {
                    weight: 256,
                    cap: 0
                }
            ),
            "Domain-0                             0    256    0\n"
        );
        assert_eq!(
            sched_credit_row(
                "web",
                12,
                &CreditParams {
                    weight: 65535,
                    cap: 150
                }
            ),
            "web                                 12  65535  150\n"
        );
        assert_eq!(
            sched_credit_pool_unavailable(POOL0),
            "Cpupool Pool-0: [sched params unavailable]\n"
        );
    }

    #[test]
    fn strtol_as_c() {
        assert_eq!(strtol("42"), (42, true));
        assert_eq!(strtol("  -7x"), (-7, true));
        assert_eq!(strtol("+3"), (3, true));
        assert_eq!(strtol("abc"), (0, false));
        assert_eq!(strtol(""), (0, false));
        assert_eq!(strtol("-"), (0, false));
        assert_eq!(strtol("99999999999999999999999").0, i64::MAX);
        assert_eq!(sched_option_value("junk"), 0);
        assert_eq!(sched_option_value("512"), 512);
        // xl keeps an int: 2^32 + 5 reads as 5
        assert_eq!(sched_option_value("4294967301"), 5);
    }

    #[test]
    fn credit_checks() {
        let cur = CreditParams::default();
        let ok = |w, c| check_credit_params(cur, w, c, 2);
        assert_eq!(
            ok(Some(512), Some(150)).unwrap(),
            CreditParams {
                weight: 512,
                cap: 150
            }
        );
        assert_eq!(ok(None, None).unwrap(), cur);
        // -1 leaves a value as it is
        assert_eq!(ok(Some(-1), Some(-1)).unwrap(), cur);
        assert_eq!(ok(Some(65535), Some(0)).unwrap().weight, 65535);
        for w in [0, 65536, -2] {
            assert_eq!(
                ok(Some(w), None).unwrap_err(),
                "Cpu weight out of range, valid values are within range from 1 to 65535"
            );
        }
        for c in [-2, 201] {
            assert_eq!(
                ok(None, Some(c)).unwrap_err(),
                "Cpu cap out of range, valid range is from 0 to 200 for specified number of vcpus"
            );
        }
        assert_eq!(
            libxl_error(3, "x"),
            "libxl: error: Domain 3:x",
            "libxl's LOGD layout"
        );
    }

    #[test]
    fn vcpu_selectors() {
        assert_eq!(parse_vcpu_selector("0"), Ok(VcpuSelector::One(0)));
        assert_eq!(parse_vcpu_selector("3x"), Ok(VcpuSelector::One(3)));
        assert_eq!(parse_vcpu_selector("all"), Ok(VcpuSelector::All));
        for bad in ["x", "-1", "", "al"] {
            assert_eq!(
                parse_vcpu_selector(bad),
                Err(format!("Error: Invalid argument {bad} as VCPU."))
            );
        }
        assert_eq!(
            could_not_set_affinity(5),
            "Could not set affinity for vcpu `5'."
        );
    }

    #[test]
    fn cpu_ranges() {
        let p = |s| parse_cpurange(s, 8);
        assert_eq!(p("all").unwrap(), (0..8).collect::<Vec<_>>());
        assert_eq!(p("1").unwrap(), [1]);
        assert_eq!(p("0-3,^2").unwrap(), [0, 1, 3]);
        assert_eq!(p("all,^0-1").unwrap(), [2, 3, 4, 5, 6, 7]);
        assert_eq!(p("5,1-2").unwrap(), [1, 2, 5]);
        // empty items are skipped, as strtok does
        assert_eq!(p(",1,,2,").unwrap(), [1, 2]);
        // CPUs the host lacks are dropped
        assert_eq!(p("6-20").unwrap(), [6, 7]);
        assert_eq!(p("9").unwrap(), Vec::<u32>::new());
        // one NUMA node: node 0 is every CPU
        assert_eq!(p("nodes:0").unwrap(), (0..8).collect::<Vec<_>>());
        assert_eq!(p("node:0,^node:0").unwrap(), Vec::<u32>::new());
        assert_eq!(p("nodes:1").unwrap(), Vec::<u32>::new());
        assert_eq!(p("^all").unwrap_err(), "Can't combine \"^\" and \"all\".");
        assert_eq!(p("3-1").unwrap_err(), "Invalid pcpu range: 3-1.");
        assert_eq!(p("1-").unwrap_err(), "Invalid pcpu range: 1-.");
        assert_eq!(p("x").unwrap_err(), "Invalid pcpu range: x.");
        assert_eq!(p("^1x").unwrap_err(), "Invalid pcpu range: 1x.");
        assert_eq!(p("nodes:a").unwrap_err(), "Invalid pcpu range: a.");
        // strtoul's leading blanks and plus sign
        assert_eq!(p(" 1,+2").unwrap(), [1, 2]);
    }
}
