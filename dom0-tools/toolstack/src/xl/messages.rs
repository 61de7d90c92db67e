//! The messages xl prints on stderr, word for word, with the exit
//! statuses that go with them.

use crate::config::ConfigError;

use super::{ERROR_INVAL, EXIT_CREATE_READ_FAILED, EXIT_FAILURE};

/// `xl create` prints this on stderr before parsing (xl_vmcontrol.c:
/// create_domain), unless `-q`.
pub fn parsing_config_from(source: &str) -> String {
    format!("Parsing config from {source}")
}

/// After a config syntax error xl prints this and exits 1 (xl_parse.c:
/// parse_config_data; the text is `strerror(EINVAL)`).
pub const FAILED_TO_PARSE_CONFIG: &str = "Failed to parse config: Invalid argument";

/// Printed after a syntax error when the file looks like Python
/// (libxlu_cfg.c).
pub const PYTHON_CONFIG_WARNING: &str =
    "warning: Config file looks like it contains Python code.\n\
warning:  Arbitrary Python is no longer supported.\n\
warning:  See https://wiki.xen.org/wiki/PythonInXlConfig";

/// Everything kxl should print (stderr) for a config error from `xl
/// create`, and the exit status xl uses.
pub fn config_error_report(err: &ConfigError) -> (String, i32) {
    match err {
        ConfigError::Read { .. } => (err.to_string(), EXIT_CREATE_READ_FAILED),
        ConfigError::Syntax { likely_python, .. } => {
            let mut s = err.to_string();
            if *likely_python {
                s.push('\n');
                s.push_str(PYTHON_CONFIG_WARNING);
            }
            s.push('\n');
            s.push_str(FAILED_TO_PARSE_CONFIG);
            (s, EXIT_FAILURE)
        }
        _ => (err.to_string(), EXIT_FAILURE),
    }
}

/// A domain name or id that matches no domain (xl_utils.c: find_domain;
/// libxl answers `ERROR_INVAL` for an unknown name). xl exits 1.
/// `xl destroy nosuch` prints `nosuch is an invalid domain identifier (rc=-6)`.
pub fn invalid_domain(qualifier: &str) -> String {
    format!("{qualifier} is an invalid domain identifier (rc={ERROR_INVAL})")
}

/// `xl block-list`/`xl block-attach` with a bad domain (xl_block.c), which
/// omit the rc.
pub fn invalid_domain_no_rc(qualifier: &str) -> String {
    format!("{qualifier} is an invalid domain identifier")
}

/// `xl list ID` for a numeric id that is not a domain (xl_info.c:
/// main_list); exit 1.
pub fn domain_does_not_exist(qualifier: &str) -> String {
    format!("Error: Domain '{qualifier}' does not exist.")
}

/// `xl domid NAME` for an unknown name (xl_info.c: main_domid); exit 1.
pub fn cant_get_domid(name: &str) -> String {
    format!("Can't get domid of domain name '{name}', maybe this domain does not exist.")
}

/// `xl domname ID` for an unknown id (xl_info.c: main_domname); exit 1.
pub fn cant_get_domname(domid: u32) -> String {
    format!("Can't get domain name of domain id '{domid}', maybe this domain does not exist.")
}

/// `xl domname X` when X has no digits (xl_info.c: main_domname; xl adds
/// an empty line); exit 1.
pub const INVALID_DOMAIN_ID: &str = "Invalid domain id.\n";

/// `xl destroy 0` without `-f` (xl_vmcontrol.c: destroy_domain); exit 1.
pub const NOT_DESTROYING_DOM0: &str = "Not destroying domain 0; use -f to force.\n\
This can only be done when using a disaggregated hardware domain and toolstack.\n";

/// A failed libxl operation, e.g. `destroy failed (rc=-21)`
/// (xl_vmcontrol.c); `what` is `destroy`, `shutdown`, `reboot`, ...
pub fn op_failed(what: &str, rc: i32) -> String {
    format!("{what} failed (rc={rc})")
}

/// `xl shutdown` (xl_vmcontrol.c: shutdown_domain), before asking.
pub fn shutting_down(domid: u32) -> String {
    format!("Shutting down domain {domid}")
}

/// `xl reboot` (xl_vmcontrol.c: reboot_domain), before asking.
pub fn rebooting(domid: u32) -> String {
    format!("Rebooting domain {domid}")
}

/// `xl shutdown`/`reboot` with neither `-a` nor a domain; exit 1 (xl adds
/// an empty line).
pub const SPECIFY_ALL_OR_DOMAIN: &str = "You must specify -a or a domain id.\n";

/// `xl shutdown`/`reboot` of a guest without PV drivers and without `-F`
/// (xl_vmcontrol.c); `reboot` selects the wording.
pub fn no_pv_control(reboot: bool) -> String {
    let (what, event) = if reboot {
        ("reboot", "reset")
    } else {
        ("shutdown", "power")
    };
    format!(
        "PV control interface not available: external graceful {what} not possible.\n\
         Use \"-F\" to fallback to ACPI {event} event."
    )
}

/// `xl mem-set`/`mem-max` with a size
/// [`parse_mem_size_kb`](super::parse_mem_size_kb) rejects (xl_mem.c); exit 1.
pub fn invalid_memory_size(mem: &str) -> String {
    format!("invalid memory size: {mem}")
}

/// `xl mem-set` failure (xl_mem.c: set_memory_target); exit 1.
pub fn cannot_set_memory_target(domid: u32, mem: &str) -> String {
    format!("cannot set domid {domid} dynamic max memory to : {mem}")
}

/// `xl mem-max` failure (xl_mem.c: set_memory_max); exit 1.
pub fn cannot_set_memory_max(domid: u32, mem: &str) -> String {
    format!("cannot set domid {domid} static max memory to : {mem}")
}

/// `xl rename` failure (xl_misc.c); exit 1.
pub fn cant_rename(domain: &str) -> String {
    format!("Can't rename domain '{domain}'.")
}

/// `xl console` failure (xl_console.c); exit 1.
pub const UNABLE_TO_ATTACH_CONSOLE: &str = "Unable to attach console";

/// `xl network-detach` with a device that is not there (xl_nic.c); exit 1.
pub fn unknown_device(dev: &str) -> String {
    format!("Unknown device {dev}.")
}

/// `xl block-detach` with a device that is not there (xl_block.c); exit 1.
pub fn device_not_connected(dev: &str) -> String {
    format!("Error: Device {dev} not connected.")
}

/// An unknown subcommand (xl.c: main); exit 1.
pub const COMMAND_NOT_IMPLEMENTED: &str = "command not implemented";

/// An unknown option before the subcommand (xl.c: main); exit 1.
pub const UNKNOWN_GLOBAL_OPTION: &str = "unknown global option";

/// A subcommand option that does not exist (xl_utils.c: def_getopt); exit
/// [`EXIT_USAGE`](super::EXIT_USAGE).
pub fn option_not_supported(opt: char) -> String {
    format!("option `{opt}' not supported.")
}

/// Too few arguments (xl_utils.c: def_getopt): this line, an empty line,
/// then [`help`](super::help) for the command; exit [`EXIT_USAGE`](super::EXIT_USAGE).
pub fn requires_arguments(command: &str, n: usize) -> String {
    format!(
        "'xl {command}' requires at least {n} argument{}.\n",
        if n > 1 { "s" } else { "" }
    )
}

/// `xl -N CMD` for a command without a dry-run mode (xl.c); exit 1.
pub const NO_DRYRUN: &str = "command does not implement -N (dryrun) option";
