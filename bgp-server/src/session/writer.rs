//! A session's write path: a bounded queue of encoded messages and a task that writes them.
//!
//! The session task never awaits a write: it puts bytes on the queue when there is room
//! ([`Writer::try_send`]) and otherwise stops producing until there is, so reads, timers and
//! keepalives go on however slowly the peer takes data. The writer task alone waits on the
//! socket, and runs the RFC 9687 send-hold timer: when it has had data to write and the peer
//! has taken none of it for the send-hold time, it gives up and says so
//! ([`WriteFailure::SendHoldExpired`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use berth_bgp_wire::{EncodeContext, Message, Notification};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// Items (encoded batches or single messages) the queue holds besides the one being written.
/// A batch is at most [`super::SYNC_BATCH`] changes (a few hundred KiB), so a peer that takes
/// nothing holds at most a few MiB here, whatever the table size: the RIB-out, not the
/// queue, remembers what is still to send.
pub const QUEUE_ITEMS: usize = 4;

/// How long a closed connection may take to flush what was queued (a NOTIFICATION, say)
/// before the socket is reset: bounds peer removal and shutdown whatever the peer does.
pub const LINGER: Duration = Duration::from_millis(300);

/// RFC 9687's default send-hold time: 8 minutes, or twice the hold time if that is longer.
pub fn default_send_hold(hold_time: u16) -> Duration {
    Duration::from_secs(480).max(Duration::from_secs(2 * u64::from(hold_time)))
}

/// The send-hold time for a session: the configured one, or RFC 9687's default for its hold
/// time. Never zero (a zero timeout would close every session at its first write).
pub fn send_hold_time(configured: Option<Duration>, hold_time: u16) -> Duration {
    configured
        .filter(|d| !d.is_zero())
        .unwrap_or_else(|| default_send_hold(hold_time))
}

/// Why the writer stopped on its own.
#[derive(Debug)]
pub enum WriteFailure {
    /// The socket failed (reset, timed out by `TCP_USER_TIMEOUT`, ...).
    Io(std::io::Error),
    /// The peer took no data for the send-hold time while some was waiting.
    SendHoldExpired(Duration),
}

/// Something the writer can reset instead of closing gracefully when it gives up.
pub trait Abort {
    /// Makes the coming close a reset (RST) so unsent data is discarded at once.
    fn abort(&self) {}
}

impl Abort for tokio::net::tcp::OwnedWriteHalf {
    fn abort(&self) {
        // A zero linger makes the close a RST: the kernel does not keep retrying megabytes
        // to a peer that takes nothing.
        let _ = self.as_ref().set_zero_linger();
    }
}

impl Abort for tokio::io::DuplexStream {}

/// The session's handle on its writer.
#[derive(Debug)]
pub struct Writer {
    tx: mpsc::Sender<Vec<u8>>,
    failed: oneshot::Receiver<WriteFailure>,
    task: JoinHandle<()>,
    send_hold_ms: Arc<AtomicU64>,
}

impl Writer {
    /// Starts the writer task on `w` with the given send-hold time.
    pub fn spawn<W>(w: W, send_hold: Duration) -> Writer
    where
        W: AsyncWrite + Abort + Unpin + Send + 'static,
    {
        let (tx, rx) = mpsc::channel(QUEUE_ITEMS);
        let (failed_tx, failed) = oneshot::channel();
        let send_hold_ms = Arc::new(AtomicU64::new(millis(send_hold)));
        let task = tokio::spawn(write_loop(w, rx, send_hold_ms.clone(), failed_tx));
        Writer {
            tx,
            failed,
            task,
            send_hold_ms,
        }
    }

    /// Changes the send-hold time (once the hold time is negotiated).
    pub fn set_send_hold(&self, send_hold: Duration) {
        self.send_hold_ms
            .store(millis(send_hold), Ordering::Relaxed);
    }

    /// Queues bytes without waiting; `false` when the queue is full (or the writer is gone).
    pub fn try_send(&self, bytes: Vec<u8>) -> bool {
        self.tx.try_send(bytes).is_ok()
    }

    /// Whether an item fits now.
    pub fn has_room(&self) -> bool {
        self.tx.capacity() > 0
    }

    /// Resolves once an item fits (or the writer is gone): the session waits on this in its
    /// select loop, next to reads and timers, never instead of them. The future borrows
    /// nothing, so the same loop can also wait on [`Writer::failed`].
    pub fn room(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let tx = self.tx.clone();
        async move {
            // The permit is dropped at once: the session fills the room with `try_send`.
            let _ = tx.reserve().await;
        }
    }

    /// Resolves when the writer gave up (socket error or send-hold expiry).
    pub async fn failed(&mut self) -> WriteFailure {
        match (&mut self.failed).await {
            Ok(f) => f,
            Err(_) => WriteFailure::Io(std::io::Error::other("the writer task ended")),
        }
    }

    /// Closes the connection: what is queued is still written, then FIN; if that takes
    /// longer than [`LINGER`] the socket is reset. Returns a task that ends within `LINGER`.
    pub fn close(self) -> JoinHandle<()> {
        let Writer { tx, mut task, .. } = self;
        drop(tx);
        tokio::spawn(async move {
            if tokio::time::timeout(LINGER, &mut task).await.is_err() {
                // Dropping the aborted future drops the socket half, after `write_loop`
                // asked for a reset on the way out (see `Aborting`).
                task.abort();
            }
        })
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// Resets the socket when dropped without `done`: a writer cancelled mid-write (the linger
/// ran out) or one that gave up leaves no data for the kernel to keep retrying.
struct Aborting<W: Abort> {
    w: W,
    done: bool,
}

impl<W: Abort> Drop for Aborting<W> {
    fn drop(&mut self) {
        if !self.done {
            self.w.abort();
        }
    }
}

async fn write_loop<W>(
    w: W,
    mut rx: mpsc::Receiver<Vec<u8>>,
    send_hold_ms: Arc<AtomicU64>,
    failed: oneshot::Sender<WriteFailure>,
) where
    W: AsyncWrite + Abort + Unpin,
{
    let mut w = Aborting { w, done: false };
    while let Some(bytes) = rx.recv().await {
        let send_hold = Duration::from_millis(send_hold_ms.load(Ordering::Relaxed));
        if let Err((f, at_boundary)) = write_holding(&mut w.w, &bytes, send_hold).await {
            if at_boundary && matches!(f, WriteFailure::SendHoldExpired(_)) {
                // RFC 9687: send the NOTIFICATION if the peer takes it, without waiting
                // for it (it almost never does). Only between messages: after part of
                // one, these bytes would be garbage.
                let _ = tokio::time::timeout(
                    Duration::from_millis(10),
                    w.w.write_all(&send_hold_notification()),
                )
                .await;
            }
            let _ = failed.send(f);
            return; // `w` resets the socket on drop
        }
    }
    // The session closed the queue and everything on it is written: a graceful close.
    let _ = w.w.shutdown().await;
    w.done = true;
}

/// NOTIFICATION Send Hold Timer Expired (RFC 9687: code 8).
fn send_hold_notification() -> Vec<u8> {
    Message::Notification(Notification::bare(8, 0)).to_bytes(&EncodeContext::default())
}

/// Writes `bytes`, failing when one write makes no progress for `send_hold` (RFC 9687: the
/// timer runs while data waits and restarts whenever the peer takes some). A failure says
/// whether nothing of `bytes` was written (the stream is between two messages).
async fn write_holding<W: AsyncWrite + Unpin>(
    w: &mut W,
    bytes: &[u8],
    send_hold: Duration,
) -> Result<(), (WriteFailure, bool)> {
    let mut rest = bytes;
    while !rest.is_empty() {
        let at_boundary = rest.len() == bytes.len();
        match tokio::time::timeout(send_hold, w.write(rest)).await {
            Err(_) => return Err((WriteFailure::SendHoldExpired(send_hold), at_boundary)),
            Ok(Ok(0)) => {
                let e = std::io::ErrorKind::WriteZero.into();
                return Err((WriteFailure::Io(e), at_boundary));
            }
            Ok(Ok(n)) => rest = rest.get(n..).unwrap_or_default(),
            Ok(Err(e)) => return Err((WriteFailure::Io(e), at_boundary)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use tokio::io::AsyncReadExt;

    #[test]
    fn default_is_eight_minutes_or_twice_the_hold_time() {
        assert_eq!(default_send_hold(90), Duration::from_secs(480));
        assert_eq!(default_send_hold(0), Duration::from_secs(480));
        assert_eq!(default_send_hold(300), Duration::from_secs(600));
        assert_eq!(send_hold_time(None, 9), Duration::from_secs(480));
        assert_eq!(
            send_hold_time(Some(Duration::from_secs(3)), 90),
            Duration::from_secs(3)
        );
        assert_eq!(
            send_hold_time(Some(Duration::ZERO), 90),
            Duration::from_secs(480)
        );
    }

    /// A peer that reads nothing: the writer gives up after exactly the send-hold time, and
    /// the session's queue never holds more than `QUEUE_ITEMS`.
    #[tokio::test(start_paused = true)]
    async fn a_peer_that_takes_nothing_expires_the_send_hold_timer() {
        let (ours, _theirs) = tokio::io::duplex(1024);
        let mut w = Writer::spawn(ours, Duration::from_secs(5));
        let started = tokio::time::Instant::now();
        let mut queued = 0;
        while w.try_send(vec![0u8; 4096]) {
            queued += 1;
            tokio::task::yield_now().await;
        }
        // One item in the writer's hands, the rest in the queue.
        assert!(queued <= QUEUE_ITEMS + 1, "{queued}");
        let f = w.failed().await;
        assert!(
            matches!(f, WriteFailure::SendHoldExpired(d) if d == Duration::from_secs(5)),
            "{f:?}"
        );
        assert_eq!(started.elapsed(), Duration::from_secs(5));
    }

    /// A slow peer that keeps taking a little never trips the timer; neither does an idle
    /// session with nothing to send.
    #[tokio::test(start_paused = true)]
    async fn a_slow_peer_and_an_idle_session_keep_the_connection() {
        let (ours, mut theirs) = tokio::io::duplex(1024);
        let mut w = Writer::spawn(ours, Duration::from_secs(5));
        // Idle for longer than the send-hold time: nothing waits, so nothing expires.
        tokio::time::sleep(Duration::from_secs(20)).await;
        let total = 40 * 1024;
        let reader = tokio::spawn(async move {
            let mut got = 0;
            let mut buf = [0u8; 512];
            while got < total {
                // 512 bytes every 4 s: slow, but under the send-hold time.
                tokio::time::sleep(Duration::from_secs(4)).await;
                got += theirs.read(&mut buf).await.unwrap();
            }
            got
        });
        let mut sent = 0;
        while sent < total {
            if w.try_send(vec![1u8; 1024]) {
                sent += 1024;
            } else {
                w.room().await;
                assert!(
                    !w.tx.is_closed(),
                    "gave up on a slow peer: {:?}",
                    w.failed().await
                );
            }
        }
        assert_eq!(reader.await.unwrap(), total);
    }

    /// Closing flushes what was queued, then ends the stream.
    #[tokio::test]
    async fn close_flushes_then_ends_the_stream() {
        let (ours, mut theirs) = tokio::io::duplex(1 << 16);
        let w = Writer::spawn(ours, Duration::from_secs(5));
        assert!(w.try_send(b"hello".to_vec()));
        assert!(w.try_send(b" world".to_vec()));
        w.close().await.unwrap();
        let mut got = String::new();
        theirs.read_to_string(&mut got).await.unwrap();
        assert_eq!(got, "hello world");
    }

    /// Closing a writer stuck on a peer that takes nothing ends within `LINGER`.
    #[tokio::test(start_paused = true)]
    async fn close_of_a_stuck_writer_ends_within_the_linger() {
        let (ours, _theirs) = tokio::io::duplex(16);
        let w = Writer::spawn(ours, Duration::from_secs(480));
        assert!(w.try_send(vec![0u8; 4096]));
        let started = tokio::time::Instant::now();
        w.close().await.unwrap();
        assert_eq!(started.elapsed(), LINGER);
    }
}
