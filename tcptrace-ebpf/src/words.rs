//! Zeroing and copying by 8-byte words. On BPF, Rust's `memset` and
//! `memmove` are byte loops called as subprograms: zeroing a 120-byte event
//! and copying it into the ring cost about 1,000 instructions, most of what
//! the transition program did. These write one aligned word at a time
//! (volatile, so LLVM does not fold them back into those calls).

use tcptrace_common::{OwnerEntry, RawEvent};

/// Types handled here: `#[repr(C)]`, 8-byte aligned, a whole number of words.
pub trait Words: Sized {
    const WORDS: usize = {
        assert!(core::mem::size_of::<Self>().is_multiple_of(8));
        assert!(core::mem::align_of::<Self>() >= 8);
        core::mem::size_of::<Self>() / 8
    };
}

impl Words for RawEvent {}
impl Words for OwnerEntry {}

/// Sets every byte of `*dst` to 0.
#[inline(always)]
pub fn zero<T: Words>(dst: *mut T) {
    let p = dst.cast::<u64>();
    let mut i = 0;
    while i < T::WORDS {
        unsafe { p.add(i).write_volatile(0) };
        i += 1;
    }
}

/// A zeroed `T` (on the stack).
#[inline(always)]
pub fn zeroed<T: Words>() -> T {
    let mut v = core::mem::MaybeUninit::<T>::uninit();
    zero(v.as_mut_ptr());
    unsafe { v.assume_init() }
}

/// Copies `*src` to `*dst` (not overlapping).
#[inline(always)]
pub fn copy<T: Words>(dst: *mut T, src: *const T) {
    let (d, s) = (dst.cast::<u64>(), src.cast::<u64>());
    let mut i = 0;
    while i < T::WORDS {
        unsafe { d.add(i).write_volatile(s.add(i).read_volatile()) };
        i += 1;
    }
}

/// A 16-byte field (an address, a comm) at an 8-aligned offset of an
/// 8-aligned struct, as two words.
#[inline(always)]
pub fn copy16(dst: &mut [u8; 16], src: &[u8; 16]) {
    let (d, s) = (dst.as_mut_ptr().cast::<u64>(), src.as_ptr().cast::<u64>());
    unsafe {
        d.write_volatile(s.read_volatile());
        d.add(1).write_volatile(s.add(1).read_volatile());
    }
}

/// Zeroes a 16-byte field (see [`copy16`]).
#[inline(always)]
pub fn zero16(dst: &mut [u8; 16]) {
    let d = dst.as_mut_ptr().cast::<u64>();
    unsafe {
        d.write_volatile(0);
        d.add(1).write_volatile(0);
    }
}

// The 16-byte fields the functions above treat as two aligned words.
const _: () = {
    use core::mem::offset_of;
    assert!(offset_of!(RawEvent, saddr).is_multiple_of(8));
    assert!(offset_of!(RawEvent, daddr).is_multiple_of(8));
    assert!(offset_of!(RawEvent, comm).is_multiple_of(8));
    assert!(offset_of!(OwnerEntry, comm).is_multiple_of(8));
};
