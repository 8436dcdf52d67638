//! Library target so `tcptrace` can name this crate as a build dependency
//! (which makes cargo rebuild it when the eBPF sources change).
#![no_std]
