//! The command table and help (xl_cmdtable.c, xl.c: help): every
//! subcommand's name, summary, usage and options.

/// One subcommand, as xl's command table describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CmdSpec {
    pub name: &'static str,
    /// Supports the global `-N` (dry run).
    pub can_dryrun: bool,
    /// Changes state, so the global `-f` applies.
    pub modifies: bool,
    pub desc: &'static str,
    pub usage: &'static str,
    pub options: Option<&'static str>,
}

const fn cmd(
    name: &'static str,
    can_dryrun: bool,
    modifies: bool,
    desc: &'static str,
    usage: &'static str,
    options: Option<&'static str>,
) -> CmdSpec {
    CmdSpec {
        name,
        can_dryrun,
        modifies,
        desc,
        usage,
        options,
    }
}

/// The subcommands kxl offers, in xl's order, with xl's synopses.
pub const COMMANDS: &[CmdSpec] = &[
    cmd(
        "create",
        true,
        true,
        "Create a domain from a configuration file",
        "<ConfigFile> [options] [vars]",
        Some(
            "-c                      Attach to the console once the domain exists.\n\
             -d                      Print debugging messages.\n\
             -e                      Do not stay in the background watching the domain.\n\
             -F                      Stay in the foreground until the domain dies.\n\
             -f FILE, --defconfig=FILE\n                     Read the configuration from FILE.\n\
             -h                      Show this help.\n\
             -n, --dryrun            Only print the configuration that would be used\n\
             \x20                        (the global -N option does the same).\n\
             -p                      Leave the new domain paused.\n\
             -q, --quiet             Print less.\n\
             -V, --vncviewer         Start a VNC viewer once the domain exists.\n\
             -A, --vncviewer-autopass\n\
             \x20                       Give the VNC password to the viewer on stdin.\n\
             --ignore-global-affinity-masks Ignore the affinity masks of xl.conf.",
        ),
    ),
    cmd(
        "list",
        false,
        false,
        "List all domains, or some",
        "[options] [Domain]\n",
        Some(
            "-l, --long              Print each domain's full configuration\n\
             -v, --verbose           Add UUIDs, shutdown reasons and security labels\n\
             -Z, --context           Add security labels\n\
             -c, --cpupool           Add each domain's CPU pool\n\
             -n, --numa              Add NUMA node affinity",
        ),
    ),
    cmd(
        "destroy",
        false,
        true,
        "Kill a domain at once",
        "[options] <Domain>\n",
        Some(
            "-f                      Allow destroying domain 0 (only meaningful with a\n\
             \x20                       disaggregated toolstack and hardware domain).",
        ),
    ),
    cmd(
        "shutdown",
        false,
        true,
        "Ask a domain to shut down",
        "[options] <-a|Domain>",
        Some(
            "-a, --all               Shut down every guest domain.\n\
             -h                      Show this help.\n\
             -F                      For HVM guests without PV drivers, press the\n\
             \x20                       virtual ACPI power button instead.\n\
             -w, --wait              Wait until the domain(s) have shut down.\n",
        ),
    ),
    cmd(
        "reboot",
        false,
        true,
        "Ask a domain to reboot",
        "[options] <-a|Domain>",
        Some(
            "-a, --all               Reboot every guest domain.\n\
             -h                      Show this help.\n\
             -F                      For HVM guests without PV drivers, send a\n\
             \x20                       virtual ACPI reset instead.\n\
             -w, --wait              Wait until the domain(s) have rebooted.\n",
        ),
    ),
    cmd(
        "pause",
        false,
        true,
        "Stop running a domain's vCPUs",
        "<Domain>",
        None,
    ),
    cmd(
        "unpause",
        false,
        true,
        "Let a paused domain run again",
        "<Domain>",
        None,
    ),
    cmd(
        "console",
        false,
        false,
        "Connect to a domain's console",
        "[options] <Domain>\n\
         -t <type>       console type, pv , serial or vuart\n\
         -n <number>     console number\n\
         -e <escape>     escape character",
        None,
    ),
    cmd(
        "mem-max",
        false,
        true,
        "Set the most memory a domain may have",
        "<Domain> <MemMB['b'[bytes]|'k'[KB]|'m'[MB]|'g'[GB]|'t'[TB]]>",
        None,
    ),
    cmd(
        "mem-set",
        false,
        true,
        "Set the memory a domain should use now",
        "<Domain> <MemMB['b'[bytes]|'k'[KB]|'m'[MB]|'g'[GB]|'t'[TB]]>",
        None,
    ),
    cmd(
        "vcpu-list",
        false,
        false,
        "List the vCPUs of all domains, or some",
        "[Domain, ...]",
        None,
    ),
    cmd(
        "vcpu-pin",
        false,
        true,
        "Choose the CPUs a vCPU may run on",
        "[option] <Domain> <VCPU|all> <Hard affinity|-|all> <Soft affinity|-|all>",
        None,
    ),
    cmd(
        "vcpu-set",
        false,
        true,
        "Set how many vCPUs a domain has online",
        "[option] <Domain> <vCPUs>",
        Some("-i, --ignore-host  Allow more vCPUs than the host has CPUs"),
    ),
    cmd(
        "vm-list",
        false,
        false,
        "List guest domains (not Domain-0 or helper domains)",
        "",
        None,
    ),
    cmd(
        "info",
        false,
        false,
        "Show information about the host and hypervisor",
        "-n, --numa         List host NUMA topology information",
        None,
    ),
    cmd(
        "domid",
        false,
        false,
        "Print the id of the domain with a given name",
        "<DomainName>",
        None,
    ),
    cmd(
        "domname",
        false,
        false,
        "Print the name of the domain with a given id",
        "<DomainId>",
        None,
    ),
    cmd(
        "rename",
        false,
        true,
        "Give a domain a new name",
        "<Domain> <NewDomainName>",
        None,
    ),
    cmd(
        "trigger",
        false,
        true,
        "Send a trigger (NMI, reset, ...) to a domain",
        "<Domain> <nmi|reset|init|power|sleep|s3resume> [<VCPU>]",
        None,
    ),
    cmd(
        "sysrq",
        false,
        true,
        "Send a SysRq key to a domain",
        "<Domain> <letter>",
        None,
    ),
    cmd(
        "dmesg",
        false,
        false,
        "Print the hypervisor's message buffer, optionally clearing it",
        "[-c]",
        Some("  -c                        Clear the buffer after printing it"),
    ),
    cmd(
        "sched-credit",
        false,
        true,
        "Show or change the credit scheduler's settings",
        "[-d <Domain> [-w[=WEIGHT]|-c[=CAP]]] [-s [-t TSLICE] [-r RATELIMIT]] [-p CPUPOOL]",
        Some(
            "-d DOMAIN, --domain=DOMAIN     The domain to show or change\n\
             -w WEIGHT, --weight=WEIGHT     Its weight (1 to 65535)\n\
             -c CAP,    --cap=CAP           Its cap, in percent of one CPU (0: none)\n\
             -s         --schedparam        Show or change the pool's parameters\n\
             -t TSLICE, --tslice_ms=TSLICE  The time slice, in milliseconds\n\
             -r RLIMIT, --ratelimit_us=RLIMIT The rate limit, in microseconds\n\
             -m DLY, --migration_delay_us=DLY The migration delay, in microseconds\n\
             -p CPUPOOL, --cpupool=CPUPOOL  Only this CPU pool",
        ),
    ),
    cmd(
        "network-attach",
        true,
        true,
        "Add a virtual network device to a domain",
        "<Domain> [type=<type>] [mac=<mac>] [bridge=<bridge>] [ip=<ip>] [script=<script>] \
         [backend=<BackDomain>] [vifname=<name>] [rate=<rate>] [model=<model>] \
         [accel=<accel>] [mtu=<mtu>]",
        None,
    ),
    cmd(
        "network-list",
        false,
        false,
        "List a domain's virtual network devices",
        "<Domain(s)>",
        None,
    ),
    cmd(
        "network-detach",
        false,
        true,
        "Remove a virtual network device from a domain",
        "<Domain> <DevId|mac>",
        None,
    ),
    cmd(
        "block-attach",
        true,
        true,
        "Add a virtual block device to a domain",
        "<Domain> <disk-spec-component(s)>...",
        None,
    ),
    cmd(
        "block-list",
        false,
        false,
        "List a domain's virtual block devices",
        "<Domain(s)>",
        None,
    ),
    cmd(
        "block-detach",
        false,
        true,
        "Remove a virtual block device from a domain",
        "[option] <Domain> <DevId>",
        Some("-f, --force        do not wait for the guest to let go of the device"),
    ),
    cmd(
        "uptime",
        false,
        false,
        "Print how long domains have been running",
        "[-s] [Domain]",
        None,
    ),
];

/// Finds a subcommand as xl does: an exact name, or a prefix of exactly
/// one name (`xl li` is `list`).
pub fn cmd_lookup(name: &str) -> Option<&'static CmdSpec> {
    if let Some(c) = COMMANDS.iter().find(|c| c.name == name) {
        return Some(c);
    }
    let mut matches = COMMANDS.iter().filter(|c| c.name.starts_with(name));
    match (matches.next(), matches.next()) {
        (Some(c), None) => Some(c),
        _ => None,
    }
}

/// `xl help [COMMAND]` / `xl COMMAND -h` (xl.c: help), printed on stdout.
/// Without a command (or with `help`): the list of subcommands.
pub fn help(command: Option<&str>) -> String {
    match command {
        None | Some("help") => {
            let mut s = String::from(
                "Usage xl [-vfNtT] <subcommand> [args]\n\nxl full list of subcommands:\n\n",
            );
            for c in COMMANDS {
                s.push_str(&format!(" {:<19} ", c.name));
                if c.name.len() > 19 {
                    s.push_str(&format!("\n {:<19} ", ""));
                }
                s.push_str(c.desc);
                s.push('\n');
            }
            s
        }
        Some(name) => match cmd_lookup(name) {
            Some(c) => {
                let mut s = format!(
                    "Usage: xl [-vtT{}{}] {} {}\n\n{}.\n\n",
                    if c.modifies { "f" } else { "" },
                    if c.can_dryrun { "N" } else { "" },
                    c.name,
                    c.usage,
                    c.desc
                );
                if let Some(o) = c.options {
                    s.push_str(&format!("Options:\n\n{o}\n"));
                }
                s
            }
            None => format!("command \"{name}\" not implemented\n"),
        },
    }
}
