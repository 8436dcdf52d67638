//! tracefs: where it is, mounting it when missing, and reading the field
//! offsets of a tracepoint record from its `format` file.

use std::{collections::HashMap, fs, path::Path, path::PathBuf};

use anyhow::{Context as _, Result, anyhow};

const CANDIDATES: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// The tracefs root with an `events/` directory, mounting it at
/// `/sys/kernel/tracing` if needed.
pub fn root() -> Result<PathBuf> {
    if let Some(found) = CANDIDATES
        .iter()
        .map(Path::new)
        .find(|p| p.join("events").is_dir())
    {
        return Ok(found.to_path_buf());
    }
    let target = c"/sys/kernel/tracing";
    // SAFETY: plain mount(2) with static NUL-terminated strings.
    let rc = unsafe {
        libc::mount(
            c"tracefs".as_ptr(),
            target.as_ptr(),
            c"tracefs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(anyhow!(
            "tracefs is not mounted and mounting it failed ({}): run `mount -t tracefs tracefs /sys/kernel/tracing`",
            std::io::Error::last_os_error()
        ));
    }
    Ok(PathBuf::from("/sys/kernel/tracing"))
}

/// Field name -> (offset, size) of a tracepoint record.
pub fn fields(root: &Path, category: &str, name: &str) -> Result<HashMap<String, (u32, u32)>> {
    Ok(parse_format(&format_text(root, category, name)?))
}

/// The text of a tracepoint's `format` file (its fields and print format).
pub fn format_text(root: &Path, category: &str, name: &str) -> Result<String> {
    let path = root.join("events").join(category).join(name).join("format");
    fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))
}

/// Parses `field:TYPE NAME[N]; offset:O; size:S; signed:X;` lines.
pub fn parse_format(text: &str) -> HashMap<String, (u32, u32)> {
    let mut out = HashMap::new();
    for line in text.lines() {
        let line = line.trim();
        let Some(rest) = line.strip_prefix("field:") else {
            continue;
        };
        let mut parts = rest.split(';').map(str::trim);
        let decl = parts.next().unwrap_or_default();
        let mut offset = None;
        let mut size = None;
        for p in parts {
            if let Some(v) = p.strip_prefix("offset:") {
                offset = v.parse().ok();
            } else if let Some(v) = p.strip_prefix("size:") {
                size = v.parse().ok();
            }
        }
        let name = decl
            .rsplit(|c: char| c.is_whitespace() || c == '*')
            .next()
            .unwrap_or_default();
        let name = name.split('[').next().unwrap_or_default();
        if let (Some(o), Some(s)) = (offset, size) {
            out.insert(name.to_string(), (o, s));
        }
    }
    out
}

/// Offset of `field`, checked for its expected size and natural alignment.
pub fn offset_of(
    fields: &HashMap<String, (u32, u32)>,
    tp: &str,
    field: &str,
    size: u32,
    align: u32,
) -> Result<u32> {
    let &(off, got) = fields
        .get(field)
        .ok_or_else(|| anyhow!("tracepoint {tp} has no field {field}"))?;
    if got != size || off % align != 0 {
        return Err(anyhow!(
            "tracepoint {tp} field {field}: offset {off} size {got}, expected size {size} aligned to {align}"
        ));
    }
    Ok(off)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_inet_sock_set_state_format() {
        let text = "name: inet_sock_set_state\nformat:\n\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;\n\tfield:__u8 saddr_v6[16];\toffset:40;\tsize:16;\tsigned:0;\n";
        let f = parse_format(text);
        assert_eq!(f["skaddr"], (8, 8));
        assert_eq!(f["saddr_v6"], (40, 16));
        assert_eq!(f["common_type"], (0, 2));
        assert!(offset_of(&f, "t", "skaddr", 8, 8).is_ok());
        assert!(offset_of(&f, "t", "skaddr", 4, 4).is_err());
        assert!(offset_of(&f, "t", "missing", 4, 4).is_err());
    }
}
