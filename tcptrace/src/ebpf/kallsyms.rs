//! Kernel symbol addresses from `/proc/kallsyms` (root sees real addresses).

use anyhow::{Result, anyhow};

pub fn address_of(symbol: &str) -> Result<u64> {
    let text = std::fs::read_to_string("/proc/kallsyms")?;
    find(&text, symbol).ok_or_else(|| anyhow!("symbol {symbol} not in /proc/kallsyms"))
}

fn find(text: &str, symbol: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let mut it = line.split_whitespace();
        let addr = it.next()?;
        let _kind = it.next()?;
        let name = it.next()?;
        (name == symbol)
            .then(|| u64::from_str_radix(addr, 16).ok())
            .flatten()
            .filter(|&a| a != 0)
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn finds_exact_symbol_and_rejects_hidden_addresses() {
        let text = "ffffffff82006070 t tw_timer_handler\nffffffff82006000 t tw_timer_handler_x\n";
        assert_eq!(
            super::find(text, "tw_timer_handler"),
            Some(0xffffffff82006070)
        );
        assert_eq!(
            super::find("0000000000000000 t tw_timer_handler\n", "tw_timer_handler"),
            None
        );
    }
}
