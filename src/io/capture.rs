//! Live capture of inner frames for `weft capture`: the data path copies frames to a bounded channel while (and
//! only while) a capture of their network is open.
//!
//! ```text
//!  datapath: frame to the overlay (before sealing) ─┐
//!            frame from the overlay (after opening) ─┴─► Captures::offer ─► channel ─► api task ─► unix socket
//! ```
//!
//! With no capture open, the data path pays one `is_active` check per frame. While one is open, each frame of its
//! network is copied once (the only per-packet allocation, and only then). A client too slow to keep up loses
//! frames, counted, rather than slowing the data path.

use std::io::{self, Read};
use std::time::Duration;

use tokio::sync::mpsc::error::TrySendError;

/// Frames queued per capture before the slowest ones are dropped.
pub const QUEUE: usize = 4096;

/// One captured frame.
#[derive(Debug)]
pub struct CapturedFrame {
    /// Wall-clock time since the Unix epoch, for the pcap record.
    pub time: Duration,
    /// Towards the overlay (read from the TAP) or from it (written to the TAP).
    pub outbound: bool,
    /// The inner Ethernet frame (a TSO superframe stays whole).
    pub data: Vec<u8>,
}

/// An open capture, as the data path holds it. Every worker holds its own copy, feeding one channel.
#[derive(Debug, Clone)]
pub struct CaptureSink {
    /// Chosen by the API, to close it.
    pub id: u64,
    /// The network index it watches.
    pub network: usize,
    /// Where frames go (a tokio channel: the API task awaits it, the worker only ever `try_send`s).
    pub frames: tokio::sync::mpsc::Sender<CapturedFrame>,
    /// Frames lost because the queue was full.
    pub dropped: u64,
}

/// The open captures.
#[derive(Debug, Default)]
pub struct Captures {
    sinks: Vec<CaptureSink>,
}

impl Captures {
    /// Whether any capture is open: the data path's only cost when none is.
    #[inline]
    pub fn is_active(&self) -> bool {
        !self.sinks.is_empty()
    }

    /// Opens a capture.
    pub fn start(&mut self, sink: CaptureSink) {
        self.sinks.push(sink);
    }

    /// Closes capture `id`.
    pub fn stop(&mut self, id: u64) {
        self.sinks.retain(|s| s.id != id);
    }

    /// Copies `frame` of `network` to each capture of that network; a capture whose reader is gone is closed.
    pub fn offer(&mut self, network: usize, outbound: bool, frame: &[u8]) {
        let time = crate::clock::wall();
        self.sinks.retain_mut(|sink| {
            if sink.network != network {
                return true;
            }
            let copy = CapturedFrame { time, outbound, data: frame.to_vec() };
            match sink.frames.try_send(copy) {
                Ok(()) => true,
                Err(TrySendError::Full(_)) => {
                    sink.dropped += 1;
                    true
                }
                Err(TrySendError::Closed(_)) => false,
            }
        });
    }

    /// Frames dropped so far by the open captures.
    pub fn dropped(&self) -> u64 {
        self.sinks.iter().map(|s| s.dropped).sum()
    }
}

/// Bytes in front of each frame on the API socket: seconds (8), nanoseconds (4), direction (1: outbound), length
/// (4), all big-endian. docs/api.md describes the stream.
pub const RECORD_HEADER: usize = 17;

impl CapturedFrame {
    /// The frame as one record of the capture stream.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.time.as_secs().to_be_bytes());
        out.extend_from_slice(&self.time.subsec_nanos().to_be_bytes());
        out.push(u8::from(self.outbound));
        out.extend_from_slice(&(self.data.len() as u32).to_be_bytes());
        out.extend_from_slice(&self.data);
    }

    /// Reads the next record; `None` at a clean end of the stream.
    pub fn read(from: &mut impl Read) -> io::Result<Option<Self>> {
        let mut header = [0u8; RECORD_HEADER];
        match from.read_exact(&mut header[..1]) {
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            other => other?,
        }
        from.read_exact(&mut header[1..])?;
        let field = |r: std::ops::Range<usize>| header[r].iter().fold(0u64, |n, b| n << 8 | u64::from(*b));
        let len = field(13..17) as usize;
        if len > 1 << 20 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, format!("capture record of {len} bytes")));
        }
        let nanos = field(8..12) as u32;
        if nanos >= 1_000_000_000 {
            // Duration::new would carry them into the seconds, and panic when those overflow.
            return Err(io::Error::new(io::ErrorKind::InvalidData, format!("capture record with {nanos} ns")));
        }
        let mut data = vec![0u8; len];
        from.read_exact(&mut data)?;
        let time = Duration::new(field(0..8), nanos);
        Ok(Some(Self { time, outbound: header[12] == 1, data }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_reach_only_their_network_and_a_gone_reader_closes_the_capture() {
        let mut captures = Captures::default();
        assert!(!captures.is_active());
        let (tx, mut rx) = tokio::sync::mpsc::channel(1);
        captures.start(CaptureSink { id: 7, network: 1, frames: tx, dropped: 0 });
        assert!(captures.is_active());
        captures.offer(0, true, b"other network");
        captures.offer(1, false, b"frame");
        captures.offer(1, false, b"queue full");
        let got = rx.try_recv().unwrap();
        assert_eq!((got.data.as_slice(), got.outbound), (&b"frame"[..], false));
        assert!(rx.try_recv().is_err(), "only the frame of network 1, once");
        assert_eq!(captures.dropped(), 1);
        drop(rx);
        captures.offer(1, true, b"nobody reads");
        assert!(!captures.is_active(), "a capture without a reader is closed");
    }

    #[test]
    fn records_round_trip() {
        let frame =
            CapturedFrame { time: Duration::new(1_700_000_000, 123_456_789), outbound: true, data: vec![1, 2, 3] };
        let mut stream = Vec::new();
        frame.encode(&mut stream);
        CapturedFrame { data: vec![9; 70_000], outbound: false, ..frame }.encode(&mut stream);
        assert_eq!(stream.len(), 2 * RECORD_HEADER + 3 + 70_000);
        let mut reader = stream.as_slice();
        let first = CapturedFrame::read(&mut reader).unwrap().unwrap();
        assert_eq!(
            (first.time, first.outbound, first.data),
            (Duration::new(1_700_000_000, 123_456_789), true, vec![1, 2, 3])
        );
        let second = CapturedFrame::read(&mut reader).unwrap().unwrap();
        assert_eq!((second.outbound, second.data.len()), (false, 70_000));
        assert!(CapturedFrame::read(&mut reader).unwrap().is_none());
        assert!(CapturedFrame::read(&mut &stream[..5]).is_err(), "a cut record is an error");
    }

    /// A garbled record (a broken stream, or another protocol on the socket) whose nanoseconds field is out of
    /// range is an error; before, Duration::new panicked when carrying them overflowed the seconds.
    #[test]
    fn out_of_range_nanoseconds_are_an_error_not_a_panic() {
        let mut record = vec![0xff; 8];
        record.extend_from_slice(&u32::MAX.to_be_bytes());
        record.extend_from_slice(&[1, 0, 0, 0, 0]);
        let error = CapturedFrame::read(&mut record.as_slice()).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
    }
}
