//! TAP superframes (overlay_proto::offload): what a local container's kernel hands weft through the virtio-net
//! header, TSO/USO metadata and all.
//!
//! Input: a 10-byte virtio-net header, then the frame. Invariants: nothing panics, whatever the header claims;
//! `segment` (copying) and `segment_gather` (header blocks plus payload ranges) accept and refuse the same frames,
//! and when they accept, every gathered datagram (its header block, then its payload slice of the frame) is byte for
//! byte the segment `segment` wrote; every payload range lies inside the frame; `segment` writes only inside its
//! slots.
#![no_main]

use libfuzzer_sys::fuzz_target;
use overlay_proto::offload::{max_segment_len, segment, segment_gather, VirtioNetHdr};

/// Headroom the worker leaves in front of each segment, and what the gather path leaves in front of each block.
const FRONT: usize = 8;
const FILL: u8 = 0xa5;

fuzz_target!(|data: &[u8]| {
    let Some((header, frame)) = data.split_first_chunk::<{ VirtioNetHdr::LEN }>() else { return };
    let Ok(hdr) = VirtioNetHdr::parse(header) else { return };
    let longest = max_segment_len(&hdr, frame);
    // Room for many tiny segments: each carries its own headers.
    let slots = match hdr.gso_size {
        0 => 1,
        size => frame.len() / usize::from(size) + 2,
    }
    .min(512);
    let stride = FRONT + longest.as_ref().map_or(frame.len(), |l| *l) + 64;
    let mut out = vec![FILL; slots * stride];
    let mut lens = vec![0; slots];
    let copied = segment(&hdr, frame, &mut out, FRONT, stride, &mut lens);

    // A frame without GSO may travel whole in its header block.
    let mut arena = vec![FILL; slots * (FRONT + 256) + frame.len()];
    let mut payloads = vec![0..0; slots];
    let gathered = segment_gather(&hdr, frame, FRONT, &mut arena, &mut payloads);

    let (count, gather) = match (copied, gathered) {
        (Ok(count), Ok(gather)) => (count, gather),
        (Err(_), Err(_)) => return,
        (copied, gathered) => panic!("segment said {copied:?}, segment_gather said {gathered:?}"),
    };
    assert_eq!(count, gather.count, "the two paths cut a different number of segments");
    for (i, &len) in lens.iter().enumerate().take(count) {
        let slot = &out[i * stride..(i + 1) * stride];
        assert!(FRONT + len <= stride, "segment {i} overflows its slot");
        assert!(slot[..FRONT].iter().all(|&b| b == FILL), "segment wrote into the headroom of slot {i}");
        let written = &slot[FRONT..FRONT + len];
        let range = payloads[i].clone();
        assert!(range.start <= range.end && range.end <= frame.len(), "payload {i} outside the frame: {range:?}");
        let block = &arena[i * gather.block + FRONT..(i + 1) * gather.block];
        let joined: Vec<u8> = block.iter().chain(&frame[range]).copied().collect();
        assert_eq!(joined, written, "gathered datagram {i} differs from the copied one");
    }
});
