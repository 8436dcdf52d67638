//! Kernel struct member offsets from the running kernel's BTF
//! (`/sys/kernel/btf/vmlinux`). Rust eBPF has no CO-RE, so these are computed
//! at load time and handed to the program as globals.

use anyhow::{Context as _, Result, anyhow, bail};
use btf_rs::{Btf, Type};

pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

pub struct KernelBtf {
    btf: Btf,
}

impl KernelBtf {
    pub fn load() -> Result<Self> {
        Self::from_file(VMLINUX)
    }

    pub fn from_file(path: &str) -> Result<Self> {
        let btf = Btf::from_file(path).with_context(|| format!("parse BTF {path}"))?;
        Ok(Self { btf })
    }

    fn struct_named(&self, name: &str) -> Result<btf_rs::Struct> {
        for ty in self
            .btf
            .resolve_types_by_name(name)
            .with_context(|| format!("struct {name} not in BTF"))?
        {
            if let Type::Struct(s) = ty {
                return Ok(s);
            }
        }
        bail!("struct {name} not in BTF")
    }

    /// Byte offset of `path` (e.g. `["ns", "inum"]`) in `struct name`, looking
    /// through anonymous struct/union members as C does.
    pub fn offset(&self, name: &str, path: &[&str]) -> Result<u32> {
        let mut st = self.struct_named(name)?;
        let mut total_bits = 0u32;
        for (i, field) in path.iter().enumerate() {
            let (bits, ty) = self
                .find_member(&st, field)?
                .ok_or_else(|| anyhow!("struct {name} has no member {}", path[..=i].join(".")))?;
            total_bits += bits;
            if i + 1 < path.len() {
                st = match self.strip(ty)? {
                    Type::Struct(s) | Type::Union(s) => s,
                    other => bail!("{name}.{field} is a {}, not a struct", other.name()),
                };
            }
        }
        if !total_bits.is_multiple_of(8) {
            bail!("{name}.{} is a bitfield", path.join("."));
        }
        Ok(total_bits / 8)
    }

    /// Finds `field` in `st` (recursing into anonymous members): its bit offset and type.
    fn find_member(&self, st: &btf_rs::Struct, field: &str) -> Result<Option<(u32, Type)>> {
        for m in &st.members {
            let name = self.btf.resolve_name(m).unwrap_or_default();
            let ty = self.btf.resolve_chained_type(m)?;
            if name == field {
                return Ok(Some((m.bit_offset(), ty)));
            }
            if name.is_empty()
                && let Type::Struct(inner) | Type::Union(inner) = self.strip(ty)?
                && let Some((bits, t)) = self.find_member(&inner, field)?
            {
                return Ok(Some((m.bit_offset() + bits, t)));
            }
        }
        Ok(None)
    }

    /// Follows typedefs and qualifiers to the underlying type.
    fn strip(&self, mut ty: Type) -> Result<Type> {
        loop {
            ty = match ty {
                Type::Typedef(ref t) => self.btf.resolve_chained_type(t)?,
                Type::Volatile(ref t) | Type::Const(ref t) | Type::Restrict(ref t) => {
                    self.btf.resolve_chained_type(t)?
                }
                Type::TypeTag(ref t) => self.btf.resolve_chained_type(t)?,
                other => return Ok(other),
            }
        }
    }

    /// Whether a function exists in BTF (fentry targets).
    pub fn has_function(&self, name: &str) -> bool {
        self.btf
            .resolve_types_by_name(name)
            .map(|tys| tys.iter().any(|t| matches!(t, Type::Func(_))))
            .unwrap_or(false)
    }
}

/// `struct net.ns`'s reference count, 0 while the namespace is torn down:
/// `__ns_ref` since 6.18's `ns_common` rework, `count` before. `None` when
/// BTF has neither (timewait sockets purged with their namespace are then
/// told as killed).
pub fn net_ns_ref(btf: &KernelBtf) -> Option<u32> {
    ["__ns_ref", "count"]
        .into_iter()
        .find_map(|member| btf.offset("net", &["ns", member]).ok())
}

/// Fills the struct-offset part of `KernelOffsets` from BTF. `net_ns_ref`
/// and `sk_err` are optional (0 when absent: purges and overflows are not
/// told apart); [`missing_optional`] says so.
pub fn struct_offsets(btf: &KernelBtf, o: &mut tcptrace_common::KernelOffsets) -> Result<()> {
    let sc = "sock_common";
    o.timer_function = btf.offset("timer_list", &["function"])?;
    o.timer_entry_pprev = btf.offset("timer_list", &["entry", "pprev"])?;
    o.tw_timer = btf.offset("inet_timewait_sock", &["tw_timer"])?;
    o.tw_substate = btf.offset("inet_timewait_sock", &["tw_substate"])?;
    o.skc_daddr = btf.offset(sc, &["skc_daddr"])?;
    o.skc_rcv_saddr = btf.offset(sc, &["skc_rcv_saddr"])?;
    o.skc_dport = btf.offset(sc, &["skc_dport"])?;
    o.skc_num = btf.offset(sc, &["skc_num"])?;
    o.skc_family = btf.offset(sc, &["skc_family"])?;
    o.skc_v6_daddr = btf.offset(sc, &["skc_v6_daddr"])?;
    o.skc_v6_rcv_saddr = btf.offset(sc, &["skc_v6_rcv_saddr"])?;
    o.skc_net = btf.offset(sc, &["skc_net"])?;
    o.net_ns_inum = btf.offset("net", &["ns", "inum"])?;
    o.net_ns_ref = net_ns_ref(btf).unwrap_or(0);
    o.sk_protocol = btf.offset("sock", &["sk_protocol"])?;
    o.sk_err = btf.offset("sock", &["sk_err"]).unwrap_or(0);
    o.inet_sport = btf.offset("inet_sock", &["inet_sport"])?;
    o.task_files = btf.offset("task_struct", &["files"])?;
    o.files_fdt = btf.offset("files_struct", &["fdt"])?;
    o.fdtable_fd = btf.offset("fdtable", &["fd"])?;
    o.fdtable_max_fds = btf.offset("fdtable", &["max_fds"])?;
    o.file_private_data = btf.offset("file", &["private_data"])?;
    o.socket_sk = btf.offset("socket", &["sk"])?;
    // The 4-tuple, family and netns pointer are copied in one read of the
    // head of sock_common.
    for (name, off, size, align) in [
        ("skc_daddr", o.skc_daddr, 4, 4),
        ("skc_rcv_saddr", o.skc_rcv_saddr, 4, 4),
        ("skc_dport", o.skc_dport, 2, 2),
        ("skc_num", o.skc_num, 2, 2),
        ("skc_family", o.skc_family, 2, 2),
        ("skc_v6_daddr", o.skc_v6_daddr, 16, 4),
        ("skc_v6_rcv_saddr", o.skc_v6_rcv_saddr, 16, 4),
        ("skc_net", o.skc_net, 8, 8),
    ] {
        if off + size > tcptrace_common::config::SOCK_HEAD_BYTES || off % align != 0 {
            bail!(
                "sock_common.{name} is at {off}: outside the first {} bytes tcptrace reads (or misaligned)",
                tcptrace_common::config::SOCK_HEAD_BYTES
            );
        }
    }
    // __tw_common must be the first member: the program reads the timewait
    // socket's 4-tuple through sock_common offsets.
    let tw_common = btf.offset("inet_timewait_sock", &["__tw_common"])?;
    if tw_common != 0 {
        bail!("inet_timewait_sock.__tw_common is at {tw_common}, expected 0");
    }
    Ok(())
}

/// The offsets the `skb:kfree_skb` program reads (`probes/kfree_skb.rs`):
/// the receiving socket's state, the packet's headers and device, the
/// device's namespace. An error leaves drop reasons off (optional).
pub fn drop_offsets(btf: &KernelBtf, o: &mut tcptrace_common::KernelOffsets) -> Result<()> {
    o.skc_state = btf.offset("sock_common", &["skc_state"])?;
    o.skb_head = btf.offset("sk_buff", &["head"])?;
    o.skb_network_header = btf.offset("sk_buff", &["network_header"])?;
    o.skb_dev = btf.offset("sk_buff", &["dev"])?;
    o.skb_protocol = btf.offset("sk_buff", &["protocol"])?;
    o.dev_nd_net = btf.offset("net_device", &["nd_net"])?;
    Ok(())
}

/// How many arguments tracepoint `name` hands a tp_btf program: the
/// parameters of the prototype behind `btf_trace_<name>` (a typedef of a
/// pointer to `void (*)(void *, ...)`), less the leading `void *`.
pub fn tracepoint_args(btf: &KernelBtf, name: &str) -> Result<usize> {
    let typedef = format!("btf_trace_{name}");
    let not_found = || anyhow!("BTF has no {typedef} prototype");
    let ty = btf
        .btf
        .resolve_types_by_name(&typedef)
        .map_err(|_| not_found())?
        .into_iter()
        .find(|t| matches!(t, Type::Typedef(_)))
        .ok_or_else(not_found)?;
    let Type::Ptr(ptr) = btf.strip(ty)? else {
        bail!("{typedef} is not a function pointer");
    };
    let Type::FuncProto(proto) = btf.btf.resolve_chained_type(&ptr)? else {
        bail!("{typedef} is not a function pointer");
    };
    Ok(proto.parameters.len().saturating_sub(1))
}

/// Whether the tp_btf `kfree_skb_btf` program fits this kernel: it reads
/// the 6.8+ prototype's four arguments (`skb`, `location`, `reason`,
/// `rx_sk`); older kernels have no `rx_sk` (and before 5.17 no reason),
/// and keep the classic tracepoint, whose record says what it has.
pub fn kfree_skb_btf_fits(btf: &KernelBtf) -> Result<()> {
    let n = tracepoint_args(btf, "kfree_skb")?;
    if n != 4 {
        bail!(
            "btf_trace_kfree_skb has {n} arguments, not the 4 of 6.8+ (skb, location, reason, rx_sk)"
        );
    }
    Ok(())
}

/// What the program cannot tell on this kernel because an optional offset
/// is missing, for the load's fallbacks (`Hooks::fallbacks`: logged by every
/// live command at `RUST_LOG=info`).
pub fn missing_optional(o: &tcptrace_common::KernelOffsets) -> Vec<String> {
    let mut out = Vec::new();
    if o.net_ns_ref == 0 {
        out.push(
            "TIME_WAIT purged with its namespace is told as killed: BTF has no struct net.ns.__ns_ref (or ns.count)"
                .to_string(),
        );
    }
    if o.sk_err == 0 {
        out.push("TIME_WAIT overflows are not told: BTF has no struct sock.sk_err".to_string());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_from_running_kernel() {
        let btf = KernelBtf::load().expect("this host has /sys/kernel/btf/vmlinux");
        let mut o = tcptrace_common::KernelOffsets::default();
        struct_offsets(&btf, &mut o).expect("all members found");
        // Facts that hold on every kernel: sock_common starts with the address pair.
        assert_eq!(o.skc_daddr, 0);
        assert_eq!(o.skc_rcv_saddr, 4);
        assert!(o.tw_timer > o.skc_v6_rcv_saddr);
        assert!(btf.offset("sock", &["no_such_member"]).is_err());
        // The namespace refcount and sk_err are found on this kernel (6.18:
        // ns.__ns_ref), right after ns.inum's neighbours.
        assert_ne!(o.net_ns_ref, 0);
        assert_ne!(o.sk_err, 0);
        assert_ne!(o.net_ns_ref, o.net_ns_inum);
        assert!(missing_optional(&o).is_empty());
    }

    #[test]
    fn drop_offsets_from_running_kernel() {
        let btf = KernelBtf::load().expect("this host has /sys/kernel/btf/vmlinux");
        let mut o = tcptrace_common::KernelOffsets::default();
        drop_offsets(&btf, &mut o).expect("all members found");
        // skc_state follows skc_family (u16) in sock_common.
        assert_eq!(
            o.skc_state,
            btf.offset("sock_common", &["skc_family"]).unwrap() + 2
        );
        assert_ne!(o.skb_head, 0);
        assert_ne!(o.skb_network_header, 0);
        assert_ne!(o.skb_dev, 0);
        assert_ne!(o.dev_nd_net, 0);
        assert_ne!(o.skb_head, o.skb_dev);
        assert_ne!(o.skb_protocol, 0);
        // 6.x: skb, location, reason, rx_sk.
        assert_eq!(tracepoint_args(&btf, "kfree_skb").unwrap(), 4);
        kfree_skb_btf_fits(&btf).expect("6.18 has rx_sk");
        // (void *, struct sock *, int oldstate, int newstate).
        assert_eq!(tracepoint_args(&btf, "inet_sock_set_state").unwrap(), 3);
        assert!(tracepoint_args(&btf, "no_such_tracepoint").is_err());
    }
}
