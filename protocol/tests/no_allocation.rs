//! The data path allocates nothing per packet: after warm-up, encapsulate + decapsulate of
//! thousands of packets through the whole `Device` performs zero heap allocations.
//!
//! A counting global allocator, so this file is its own test binary with one test.

use protocol::testing::{Pair, Side};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn data_path_allocates_nothing_per_packet() {
    let mut pair = Pair::new(1);
    let hello = pair.packet(Side::A, b"hello");
    pair.send_ip(Side::A, &hello).expect("queued");
    pair.run_for(Duration::from_millis(50));
    let (from, now) = (pair.a.address, pair.now);
    let packets: Vec<Vec<u8>> = [0usize, 1, 100, 1000, 1392].iter().map(|n| pair.packet(Side::A, &vec![7; *n])).collect();
    let (mut datagram, mut plaintext) = (vec![0u8; 2048], vec![0u8; 2048]);
    let mut round_trip = |pair: &mut Pair| {
        for packet in &packets {
            let transmit = pair.a.device.encapsulate(packet, &mut datagram, now).expect("ok").expect("sent");
            pair.b.device.decapsulate(from, &datagram[..transmit.len], &mut plaintext, now).expect("ok");
        }
    };
    round_trip(&mut pair); // warm-up: the padding buffer reaches its size once
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    for _ in 0..1000 {
        round_trip(&mut pair);
    }
    let allocations = ALLOCATIONS.load(Ordering::Relaxed) - before;
    assert_eq!(allocations, 0, "{allocations} allocations in 5000 packets");
}
